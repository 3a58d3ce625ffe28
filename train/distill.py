"""Distil a family's teacher into a few-step student:
`accelerate launch train/distill.py --method lcd --family emoji-64 --max-steps 2000` (plain python works too)."""

from rglcd.training.cli_args import parse_config
from rglcd.training.distill import DistillConfig, train_distill

if __name__ == "__main__":
    train_distill(parse_config(DistillConfig, __doc__))
