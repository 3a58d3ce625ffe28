"""Distil a family's teacher into a few-step student:
`accelerate launch train/distill.py --method lcd --family emoji-64 --max-steps 2000` (plain python works too).
`--method ict` trains a consistency model from data instead (no teacher; rglcd.training.ict)."""

from rglcd.training.cli_args import requested_method, run_trainer

if __name__ == "__main__":
    if requested_method() == "ict":
        from rglcd.training.ict import ICTConfig, train_ict

        raise SystemExit(run_trainer(train_ict, ICTConfig, __doc__))
    else:
        from rglcd.training.distill import DistillConfig, train_distill

        raise SystemExit(run_trainer(train_distill, DistillConfig, __doc__))
