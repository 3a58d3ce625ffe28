"""Train the emoji-64 reward heads: `python train/reward.py` (about a minute once tower features are cached)."""

from rglcd.training.cli_args import run_trainer
from rglcd.training.reward import RewardConfig, train_reward

if __name__ == "__main__":
    raise SystemExit(run_trainer(train_reward, RewardConfig, __doc__, print_result=True))
