"""Train the Fashion-MNIST classifier of the iCT ablation's Frechet distance (Debian `dataset-fashion-mnist`):
`python train/fashion_classifier.py --threads 1` -> assets/models/fashion-mnist/classifier."""

import json

from rglcd.training.cli_args import parse_config
from rglcd.training.fashion_classifier import ClassifierConfig, train_classifier

if __name__ == "__main__":
    print(json.dumps(train_classifier(parse_config(ClassifierConfig, __doc__)), indent=2))
