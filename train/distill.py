"""Distil a family's teacher into a few-step student:
`accelerate launch train/distill.py --method lcd --family emoji-64 --max-steps 2000` (plain python works too).
Methods (rglcd.methods): lcd, rg-lcd, mlcm, tcd (distillation); ict trains a consistency model from data instead (no
teacher; rglcd.training.ict). `--method M --help` lists the settings of M's trainer."""

from rglcd.training.cli_args import requested_method, run_trainer
from rglcd.training.trainers import trainer_for

if __name__ == "__main__":
    trainer = trainer_for(requested_method())
    raise SystemExit(run_trainer(trainer.train, trainer.config, __doc__, inputs=trainer.inputs))
