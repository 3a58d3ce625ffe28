"""Train the Fashion-MNIST classifier of the iCT ablation's Frechet distance (Debian `dataset-fashion-mnist`):
`python train/fashion_classifier.py --threads 1` -> assets/models/fashion-mnist/classifier."""

from rglcd.training.cli_args import run_trainer
from rglcd.training.fashion_classifier import ClassifierConfig, train_classifier

if __name__ == "__main__":
    raise SystemExit(run_trainer(train_classifier, ClassifierConfig, __doc__, print_result=True))
