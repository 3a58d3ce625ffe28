"""Train the Fashion-MNIST classifier of the iCT ablation's Frechet distance (Debian `dataset-fashion-mnist`):
`python train/fashion_classifier.py --threads 1` -> runs/fashion-mnist/classifier (the shipped one in
assets/models/fashion-mnist/classifier was made with `--export-dir assets/models/fashion-mnist/classifier
--replace-shipped`)."""

from rglcd.training.cli_args import run_trainer
from rglcd.training.fashion_classifier import ClassifierConfig, train_classifier

if __name__ == "__main__":
    raise SystemExit(run_trainer(train_classifier, ClassifierConfig, __doc__, print_result=True))
