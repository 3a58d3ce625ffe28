"""Image helpers shared by the data loaders, the rewards, the evaluator and the trainers: one resize + centre crop,
sample grids as arrays and PNG files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def resize_and_crop(images: torch.Tensor, size: int, mode: str = "bicubic") -> torch.Tensor:
    """Float (B,C,H,W) -> (B,C,size,size): the shorter side scaled to `size` (`mode` interpolation, antialiased
    when shrinking), then the centre square cut out. Values keep their range up to interpolation overshoot (callers
    clamp); differentiable."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = F.interpolate(images, size=new, mode=mode, align_corners=False, antialias=scale < 1)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return x[..., top: top + size, left: left + size]


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
