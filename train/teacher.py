"""Train the emoji-64 teacher UNet: `accelerate launch train/teacher.py --max-steps 4000` (plain python works too).

Needs the family's autoencoder (train/autoencoder.py) and reward (train/reward.py, for the evaluation) first.
"""

from rglcd.training.cli_args import parse_config
from rglcd.training.teacher import TeacherConfig, train_teacher

if __name__ == "__main__":
    train_teacher(parse_config(TeacherConfig, __doc__))
