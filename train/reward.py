"""Train the emoji-64 reward heads: `python train/reward.py` (about a minute once tower features are cached)."""

import json

from rglcd.training.cli_args import parse_config
from rglcd.training.reward import RewardConfig, train_reward

if __name__ == "__main__":
    print(json.dumps(train_reward(parse_config(RewardConfig, __doc__)), indent=2))
