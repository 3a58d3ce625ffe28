"""Train the small Fashion-MNIST classifier whose features the iCT ablation's Frechet distance uses
(`rglcd.networks.FashionClassifier`, 0.36M parameters): Adam, cross-entropy, random horizontal flips; 2,000
steps of batch 128 took 2 min 33 s on one core of the 2-core CPU (`wall_s` in metrics.json). Exported with `save_pretrained`,
with its test accuracy in `metrics.json` (30 steps already reach 67%).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from rglcd.data.fashion_mnist import FashionMNISTBatches, load_fashion_mnist, padded_model_input
from rglcd.files import write_metrics
from rglcd.networks import FashionClassifier
from rglcd.training.checkpoints import step_generator
from rglcd.training.export import refuse_shipped
from rglcd.training.settings import setting
from rglcd.training.tracking import require_one_process


@dataclass
class ClassifierConfig:
    """A classifier run: its width and feature size, the recipe, where it is exported."""

    export_dir: str = setting("runs/fashion-mnist/classifier", "where the classifier (save_pretrained folder and "
                                                               "metrics.json) is exported")
    replace_shipped: bool = setting(False, "allow exporting into assets/ (the shipped classifier)")
    data: str | None = setting(None, "folder of the Fashion-MNIST idx files (default: the Debian package "
                                     "dataset-fashion-mnist's)")
    width: int = setting(32, "channels of the first convolution (doubled at each of the next two)")
    feature_dim: int = setting(128, "size of the penultimate features the Frechet distance uses")
    batch_size: int = setting(128, "batch size")
    learning_rate: float = setting(1e-3, "Adam learning rate (constant)")
    max_steps: int = setting(2000, "optimiser steps")
    seed: int = setting(0, "seed of the initialisation and of every batch draw")


def train_classifier(cfg: ClassifierConfig) -> dict[str, float]:
    """Train, export to `cfg.export_dir`, return {test_accuracy, loss, wall_s}."""
    require_one_process("train/fashion_classifier.py")
    refuse_shipped(cfg.export_dir, cfg.replace_shipped)
    torch.manual_seed(cfg.seed)
    data = FashionMNISTBatches("train", cfg.data)
    model = FashionClassifier(cfg.width, cfg.feature_dim).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.learning_rate)
    t0, loss = time.time(), torch.tensor(0.0)
    for step in range(cfg.max_steps):
        g = step_generator(cfg.seed, step)
        images, labels = data.batch(cfg.batch_size, g)
        flip = torch.rand(len(images), generator=g) < 0.5
        images[flip] = images[flip].flip(-1)
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
    images, labels = load_fashion_mnist("test", cfg.data)
    with torch.no_grad():
        predicted = torch.cat([model(chunk).argmax(-1) for chunk in padded_model_input(images).split(1000)])
    metrics = {"test_accuracy": (predicted == labels).float().mean().item(), "loss": loss.item(),
               "steps": cfg.max_steps, "wall_s": time.time() - t0}
    export = Path(cfg.export_dir)
    model.save_pretrained(export)
    write_metrics(export, metrics)
    return metrics
