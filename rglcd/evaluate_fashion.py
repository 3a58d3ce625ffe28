"""Fashion-MNIST evaluation of class-conditional consistency models (the iCT ablation):

    python -m rglcd.evaluate_fashion --models huber-lognormal-curriculum=runs/fashion-mnist/ict/model,... \
        --steps 1,2 --images 10000 --out bench/results/ict-ablation

Per (model, steps): the Frechet distance between generated images (classes in turn, 1,000 per class for 10,000)
and the 10,000 test images in the features of a small CNN classifier trained on Fashion-MNIST for it
(`rglcd.networks.FashionClassifier`, `train/fashion_classifier.py`): "FD-FMNIST-CNN", not FID, comparable only
within a table; and the classifier's agreement with the requested class. Writes `results.json` and `results.md`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
from diffusers import UNet2DModel

from rglcd.data.fashion_mnist import load_fashion_mnist, padded_model_input
from rglcd.files import write_atomic, write_json
from rglcd.loading import ASSETS
from rglcd.metrics import FrechetReference
from rglcd.networks import FashionClassifier
from rglcd.sampling import consistency_sample
from rglcd.scheduling_cm import CMScheduler

FD_NAME = "FD-FMNIST-CNN"
CLASSIFIER = ASSETS / "models" / "fashion-mnist" / "classifier"


@torch.no_grad()
def classifier_features(classifier: FashionClassifier, images: torch.Tensor, batch_size: int = 1000
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """(features (N,D), predicted classes (N,)) of images (N,1,32,32) in [-1,1]."""
    feats = torch.cat([classifier.features(chunk) for chunk in images.split(batch_size)])
    return feats, classifier.head(feats).argmax(-1)


def fashion_reference(classifier: FashionClassifier, root: str | Path | None = None) -> FrechetReference:
    """The Frechet reference of the 10,000 test images in the classifier's features."""
    images, _ = load_fashion_mnist("test", root)
    return FrechetReference.from_features(classifier_features(classifier, padded_model_input(images))[0])


@torch.no_grad()
def sample_classes(unet: torch.nn.Module, scheduler: Any, count: int, steps: int, seed: int = 0,
                   batch_size: int = 500, num_classes: int = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """(images (count,1,32,32) in [-1,1], labels (count,)): classes 0, 1, ..., 9, 0, ... in turn, seeded."""
    labels = torch.arange(count) % num_classes
    g = torch.Generator().manual_seed(seed)
    device = next(unet.parameters()).device
    shape = (unet.config.in_channels, unet.config.sample_size, unet.config.sample_size)
    chunks = []
    for y in labels.split(batch_size):
        noise = torch.randn((len(y), *shape), generator=g).to(device)
        chunks.append(consistency_sample(unet, scheduler, noise, steps, g, class_labels=y.to(device)).cpu())
    return torch.cat(chunks).clamp(-1, 1), labels


def fashion_scores(unet: torch.nn.Module, scheduler: Any, classifier: FashionClassifier,
                   reference: FrechetReference, steps: int, count: int, seed: int = 0) -> dict[str, float]:
    """{FD_NAME, class_accuracy, seconds_per_image} of `count` samples at `steps` steps."""
    t0 = time.perf_counter()
    images, labels = sample_classes(unet, scheduler, count, steps, seed)
    seconds = (time.perf_counter() - t0) / count
    feats, predicted = classifier_features(classifier, images)
    return {FD_NAME: reference.distance(feats), "class_accuracy": (predicted == labels).float().mean().item(),
            "seconds_per_image": seconds}


def load_model(folder: str | Path) -> tuple[torch.nn.Module, Any]:
    """A class-conditional UNet2DModel folder and its CMScheduler (scheduler_config.json beside it, else defaults)."""
    folder = Path(folder)
    unet = UNet2DModel.from_pretrained(folder).eval()
    scheduler = CMScheduler.from_pretrained(folder) if (folder / "scheduler_config.json").is_file() else CMScheduler()
    return unet, scheduler


def fashion_table(rows: list[dict[str, Any]]) -> str:
    """The Markdown table of `fashion_scores` rows (model, steps, FD, class accuracy, seconds per image)."""
    lines = [f"| model | steps | {FD_NAME} | class accuracy (%) | s / image |", "|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['steps']} | {r[FD_NAME]:.2f} | {100 * r['class_accuracy']:.1f} | "
              f"{r['seconds_per_image']:.4f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", required=True, help="name=folder,name=folder,... (exported UNet2DModel folders)")
    parser.add_argument("--steps", default="1,2", help="step counts, e.g. 1,2")
    parser.add_argument("--images", type=int, default=10000, help="generated images per (model, steps)")
    parser.add_argument("--classifier", default=str(CLASSIFIER), help="FashionClassifier folder")
    parser.add_argument("--data", default=None, help="folder of the idx files (default: the Debian package's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", required=True, help="output folder for results.json and results.md")
    args = parser.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    classifier = FashionClassifier.from_pretrained(args.classifier).eval()
    reference = fashion_reference(classifier, args.data)
    rows = []
    for spec in args.models.split(","):
        name, _, folder = spec.partition("=")
        unet, scheduler = load_model(folder)
        for steps in (int(s) for s in args.steps.split(",")):
            rows.append({"model": name, "steps": steps, "folder": folder,
                         **fashion_scores(unet, scheduler, classifier, reference, steps, args.images, args.seed)})
            print(json.dumps(rows[-1]), flush=True)
    out = Path(args.out)
    write_json(out / "results.json", {"command": " ".join(sys.argv), "rows": rows})
    write_atomic(out / "results.md", fashion_table(rows))
    print(fashion_table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
