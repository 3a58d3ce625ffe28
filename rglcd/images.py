"""Sample grids as arrays and PNG files, for the evaluator, the trainers and the CLI, and reading images back to
score them (the resize + centre crop the data, rewards and evaluator share is `rglcd.pixels.resize_and_center_crop`).

A grid PNG carries its layout in a text chunk (`GRID_KEY`: tiles, columns, tile size, padding), so `python -m rglcd
score` scores it tile by tile exactly, whatever the family's resolution; a grid without it (re-saved by another
tool, or a JPEG/WebP) is recognised by its size (`looks_like_grid`) and refused with how to split it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, PngImagePlugin

GRID_KEY = "rglcd-grid"
GRID_PAD = 2  # white pixels between and around the tiles of a grid of several images


def grid_shape(n: int, nrow: int, pad: int = GRID_PAD) -> tuple[int, int, int]:
    """(columns, rows, pad) of a grid of `n` images at most `nrow` a row; one image has no padding."""
    ncol = min(nrow, n)
    return ncol, (n + ncol - 1) // ncol, 0 if n == 1 else pad


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = GRID_PAD) -> np.ndarray:
    """(N,3,H,W) in [0,1] -> uint8 (rows*(H+pad)+pad, nrow*(W+pad)+pad, 3) on white; one image is returned as-is."""
    n, _, h, w = images.shape
    ncol, rows, pad = grid_shape(n, nrow, pad)
    grid = torch.ones(3, rows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, img in enumerate(images.clamp(0, 1).float().cpu()):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write `image_grid(images)` (parent folders created); a PNG of several images records its layout under
    GRID_KEY."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    n, _, h, w = images.shape
    info = None
    if n > 1 and path.suffix.lower() == ".png":
        ncol, _, pad = grid_shape(n, nrow)
        info = PngImagePlugin.PngInfo()
        info.add_text(GRID_KEY, json.dumps({"tiles": n, "columns": ncol, "width": w, "height": h, "pad": pad}))
    Image.fromarray(image_grid(images, nrow)).save(path, pnginfo=info)
    return path


def on_white(img: Image.Image) -> Image.Image:
    """The image in RGB, any transparency composited on white (the training renders are glyphs on white,
    `rglcd.data.emoji.render`); dropping the alpha instead would show the hidden colour, often black."""
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def grid_tiles(img: Image.Image) -> list[Image.Image] | None:
    """The tiles of a grid written by `save_grid` (its GRID_KEY layout), in order; None for an image without one."""
    text = img.info.get(GRID_KEY) if hasattr(img, "info") else None
    if text is None:
        return None
    try:
        layout = json.loads(text)
        n, ncol, w, h, pad = (int(layout[k]) for k in ("tiles", "columns", "width", "height", "pad"))
    except (ValueError, KeyError, TypeError):  # not our layout (edited by hand): scored as one image
        return None
    tiles = []
    for i in range(n):
        r, c = divmod(i, ncol)
        x, y = pad + c * (w + pad), pad + r * (h + pad)
        tiles.append(img.crop((x, y, x + w, y + h)))
    return tiles


def looks_like_grid(size: tuple[int, int], tile: int) -> bool:
    """Whether (width, height) is that of a `save_grid` grid of at least two `tile`-pixel images."""
    counts = [(s - GRID_PAD) / (tile + GRID_PAD) for s in size]
    return all(k >= 1 and k == int(k) for k in counts) and counts[0] * counts[1] >= 2
