"""Train the emoji-64 autoencoder: `accelerate launch train/autoencoder.py --max-steps 4000` (plain python works too)."""

from rglcd.training.autoencoder import AutoencoderConfig, train_autoencoder
from rglcd.training.cli_args import run_trainer

if __name__ == "__main__":
    raise SystemExit(run_trainer(train_autoencoder, AutoencoderConfig, __doc__))
