"""Train the emoji-64 teacher UNet: `accelerate launch train/teacher.py --max-steps 4000` (plain python works too).

Needs the family's autoencoder (train/autoencoder.py) and reward (train/reward.py, for the evaluation) first.
"""

from rglcd.training.cli_args import run_trainer
from rglcd.training.teacher import TeacherConfig, train_teacher

if __name__ == "__main__":
    raise SystemExit(run_trainer(train_teacher, TeacherConfig, __doc__))
