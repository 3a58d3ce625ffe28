"""Evaluation metrics on generated images; pure functions of tensors and a reward model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn



@torch.no_grad()
def prompt_following(reward: nn.Module, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Does image i score higher under its own prompt i than under the other prompts of the set?

    images: (N,3,H,W) in [0,1], image i made for prompts[i]. Returns
    - `win_rate`: mean over i of the fraction of j != i with R(x_i, p_i) > R(x_i, p_j),
    - `top1`: fraction of images whose own prompt scores highest of all N,
    - `reward`: mean R(x_i, p_i).
    """
    scores = reward.score_matrix(images, prompts) if hasattr(reward, "score_matrix") else torch.stack(
        [reward(images, [p] * len(prompts)) for p in prompts], dim=1)
    own = scores.diagonal()
    n = len(prompts)
    wins = (own.unsqueeze(1) > scores).sum(1).float() / (n - 1)
    return {"win_rate": wins.mean().item(), "top1": (wins == 1).float().mean().item(), "reward": own.mean().item()}


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
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow)).save(path)
    return path


@torch.no_grad()
def evaluate_prompt_following(family: Any, member: str, reward: nn.Module, prompt_sets: dict[str, list[str]],
                              steps: int, guidance: float, seed: int = 0, grid_path: str | Path | None = None,
                              unet: Any | None = None, kind: str | None = None) -> dict[str, float]:
    """`prompt_following` of a family member on each named prompt set (e.g. 16 training, 16 held-out prompts).

    One image per prompt, seed `seed`; keys `{set}_{win_rate,top1,reward}`. With `grid_path`, writes
    `<stem>-<set>.png` beside it. `unet` (and `kind`) override the member's weights (a model in training).
    """
    pipe = family.pipeline(member, unet=unet, kind=kind)
    out: dict[str, float] = {}
    for split, prompts in prompt_sets.items():
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                      generator=torch.Generator().manual_seed(seed)).images.float().cpu()
        out.update({f"{split}_{k}": v for k, v in prompt_following(reward, images, prompts).items()})
        if grid_path is not None:
            grid_path = Path(grid_path)
            save_grid(images, grid_path.with_name(f"{grid_path.stem}-{split}.png"), nrow=8)
    return out
