"""Sample grids as arrays and PNG files, for the evaluator, the trainers and the CLI (the resize + centre crop the
data, rewards and evaluator share is `rglcd.pixels.resize_and_center_crop`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """(N,3,H,W) in [0,1] -> uint8 (rows*(H+pad)+pad, nrow*(W+pad)+pad, 3) on white; one image is returned as-is."""
    n, _, h, w = images.shape
    if n == 1:
        pad = 0
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = torch.ones(3, rows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, img in enumerate(images.clamp(0, 1).float().cpu()):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write `image_grid(images)` as PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow)).save(path)
    return path
