"""Scoring a set of images: every reward of the family, prompt following within the set, the high-frequency share,
and the EfficientNet-Lite0 features of the Frechet distance."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn

from rglcd.pixels import resize_and_center_crop
from rglcd.metrics import PooledFeatures, high_frequency_energy, pairwise_wins
from rglcd.models import ModelLoadError
from rglcd.rewards import RewardMix, get_reward, parse_mix
from rglcd.rewards.emoji import load_efficientnet_lite0, preprocess

FD_EFFNET = "FD-EffNetLite0"  # the evaluator's Frechet distance (rglcd.evaluate_fashion has its own classifier's)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SCORES_VERSION = 2  # bump when score_images gains a metric, so cached scores are recomputed


def score_matrix(reward: nn.Module, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N images, N prompts) reward scores; one batched call when the reward has `score_matrix`."""
    if hasattr(reward, "score_matrix"):
        return reward.score_matrix(images, prompts)
    return torch.stack([reward(images, [p] * len(images)) for p in prompts], dim=1)


@torch.no_grad()
def prompt_following(reward: nn.Module, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Does image i score higher under its own prompt i than under the other prompts of the set?

    images: (N,3,H,W) in [0,1], image i made for prompts[i]. Returns
    - `win_rate`: mean over i of the fraction of j != i with R(x_i, p_i) > R(x_i, p_j),
    - `top1`: fraction of images whose own prompt scores highest of all N,
    - `reward`: mean R(x_i, p_i).
    """
    wins = pairwise_wins(score_matrix(reward, images, prompts))
    return {"win_rate": wins["win"].mean().item(), "top1": wins["top1"].mean().item(),
            "reward": wins["own"].mean().item()}


def efficientnet_lite0_features() -> PooledFeatures:
    """The frozen feature extractor of FD-EffNetLite0: ImageNet EfficientNet-Lite0, 224 px, pooled (B,1280)."""
    return PooledFeatures(load_efficientnet_lite0(), preprocess, 224, FD_EFFNET)


def family_reward_names(family: Any, extra: tuple[str, ...] = ()) -> list[str]:
    """Names of the rewards to report, without loading them: the family's (each component of a mix), then `extra`."""
    spec = str(family.spec.get("reward", "")).partition("=")[0]
    names = list(parse_mix(spec)) if "," in spec or "=" in spec else [spec]
    return names + [n for n in extra if n not in names]


def family_rewards(family: Any, extra: tuple[str, ...] = ()) -> tuple[nn.Module, dict[str, nn.Module]]:
    """(the family's reward, {name: reward} for every name of `family_reward_names`)."""
    main = family.reward()
    names = family_reward_names(family, extra)
    rewards = dict(main.rewards.items()) if isinstance(main, RewardMix) else {names[0]: main}
    rewards.update({n: get_reward(n) for n in names if n not in rewards})
    return main, rewards


def prompt_groups(n: int, group: int, seed: int = 0) -> list[torch.Tensor]:
    """Index groups within which prompt following is measured: all n together when group is 0 or >= n, else a
    fixed random partition into groups of `group` (a last group of one joins the one before)."""
    if group <= 0 or group >= n:
        return [torch.arange(n)]
    parts = list(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).split(group))
    if len(parts[-1]) < 2:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


@torch.no_grad()
def score_images(images: torch.Tensor, prompts: list[str], pf_reward: nn.Module, rewards: dict[str, nn.Module],
                 extractor: nn.Module, batch_size: int = 64, pf_group: int = 0) -> dict[str, torch.Tensor]:
    """Per-image metrics of uint8 images (N,3,H,W), image i made for prompts[i]: `reward_<name>` (N,) own-prompt
    scores, `pf_win` / `pf_top1` (N,) prompt following of `pf_reward` within `prompt_groups`, `hf_share` (N,) the
    share of spectral energy above 0.25 cycles/pixel (a reward-hacking symptom), `features` (N,D)."""
    device = next(extractor.parameters()).device
    x = images.to(device).float() / 255
    out: dict[str, list[torch.Tensor]] = {f"reward_{n}": [] for n in rewards}
    out["features"], out["hf_share"] = [], []
    for start in range(0, len(x), batch_size):
        xb, pb = x[start: start + batch_size], prompts[start: start + batch_size]
        for name, reward in rewards.items():
            out[f"reward_{name}"].append(reward(xb, pb).float().cpu())
        out["features"].append(extractor(xb).float().cpu())
        out["hf_share"].append(high_frequency_energy(xb).float().cpu())
    result = {k: torch.cat(v) for k, v in out.items()}
    result["pf_win"], result["pf_top1"] = torch.zeros(len(x)), torch.zeros(len(x))
    for idx in prompt_groups(len(x), pf_group):
        wins = pairwise_wins(score_matrix(pf_reward, x[idx.to(device)], [prompts[i] for i in idx]).float().cpu())
        result["pf_win"][idx], result["pf_top1"][idx] = wins["win"], wins["top1"]
    return result


def iter_image_folder(folder: Path, size: int, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """uint8 batches (B,3,size,size) of the images in `folder` (sorted, recursive): `resize_and_center_crop`, bicubic."""
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ModelLoadError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start: start + batch_size]:
            pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)[None].float()
            batch.append(resize_and_center_crop(pixels, size, "bicubic")[0].round().clamp(0, 255).to(torch.uint8))
        yield torch.stack(batch)

