"""One registry of reward models: `get_reward(name, weights=folder_or_hub_id)`, and weighted mixes.

Every reward is an nn.Module: `reward(images in [0,1] (B,3,H,W), prompts: list[str]) -> (B,)` scores,
differentiable w.r.t. the images.

Two scales, one convention (stated here and in `DISPLAY_SCALES`; docs/training.md repeats it):
- display scale, what `reward(images, prompts)` returns and what evaluations, the demo, the CLI and the docs
  report: each reward's entry of `DISPLAY_SCALES` (hpsv2.1 and emoji 100 x cos, pickscore exp(logit_scale) x cos, ...);
- training scale, what the RG-LCD objective maximises (`training_score`): the display score times the reward's
  `training_scale` (1 when it has none), chosen so that it is the RG-LCD reference's training reward
  (Ji4chenLi/rg-lcd `reward_fn.py`, `return_logits=False`): hpsv2.1, pickscore plain cos; clipscore max(cos, 0);
  imagereward(-clipped) and aesthetic unchanged. So a recipe's `reward_scale` is the paper's beta, and a mix's
  weights ("hpsv2.1=1,imagereward-clipped=0.1") weigh the training scores as the reference's weighted reward does.
  emoji has no reference: its training scale is its display scale (100 x cos), the scale the shipped emoji-64
  RG-LCM recipe's beta 3e-3 was chosen on.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from torch import nn

from rglcd.loading import ASSETS, ModelLoadError
from rglcd.rewards.aesthetic import load_aesthetic
from rglcd.rewards.blip import RG_LCD_CLIP_AT, load_imagereward
from rglcd.rewards.clip import VIT_H_14, load_hf_clip_reward, load_hps
from rglcd.rewards.emoji import EmojiReward

DEFAULT_WEIGHTS: dict[str, str] = {
    "emoji": str(ASSETS / "models" / "emoji-64" / "reward"),
    "hpsv2.1": "HPS_v2.1_compressed.pt",
    "pickscore": "yuvalkirstain/PickScore_v1",
    "clipscore": "openai/clip-vit-large-patch14",
    "imagereward": "ImageReward.pt",
    "imagereward-clipped": "ImageReward.pt",
    "aesthetic": "sac+logos+ava1-l14-linearMSE.pth",
}


LOADERS: dict[str, Callable[[str], nn.Module]] = {
    "emoji": EmojiReward.from_pretrained,
    "hpsv2.1": load_hps,
    "pickscore": partial(load_hf_clip_reward, score="pickscore", tokenizer_from=VIT_H_14),
    "clipscore": partial(load_hf_clip_reward, score="clipscore"),
    "imagereward": load_imagereward,
    "imagereward-clipped": partial(load_imagereward, clip_at=RG_LCD_CLIP_AT),
    "aesthetic": load_aesthetic,
}
"""Each reward's loader: weights (a folder, file or hub id) -> the model."""

DISPLAY_SCALES: dict[str, str] = {
    "emoji": "100 x cosine",
    "hpsv2.1": "100 x cosine",
    "pickscore": "exp(logit_scale) x cosine",
    "clipscore": "100 x max(cosine, 0)",
    "imagereward": "ImageReward score",
    "imagereward-clipped": "min(ImageReward - 2, 0)",
    "aesthetic": "aesthetic score 1-10",
}
"""Each reward's display scale (module docstring), as a label for printed scores."""


def reward_label(name: str) -> str:
    """A printed score's label: 'emoji reward (100 x cosine)'; a reward without a known scale by its name alone."""
    scale = DISPLAY_SCALES.get(name)
    return f"{name} reward ({scale})" if scale else f"{name} reward"


class RewardMix(nn.Module):
    """Weighted sum of rewards: sum_i w_i R_i(images, prompts), (B,)."""

    def __init__(self, rewards: dict[str, nn.Module], weights: dict[str, float]) -> None:
        super().__init__()
        self.names = list(rewards)  # registry names such as "hpsv2.1", which an nn.ModuleDict key cannot be
        self.members = nn.ModuleList(rewards.values())
        self.weights = dict(weights)

    @property
    def rewards(self) -> dict[str, nn.Module]:
        """The members by registry name."""
        return dict(zip(self.names, self.members))

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return sum(self.weights[k] * r(images, prompts) for k, r in self.rewards.items())


def training_score(reward: nn.Module, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """The reward (B,) on the training scale (module docstring): display score x `training_scale`, per member of
    a mix, each weighted."""
    if isinstance(reward, RewardMix):
        return sum(reward.weights[k] * training_score(r, images, prompts) for k, r in reward.rewards.items())
    return getattr(reward, "training_scale", 1.0) * reward(images, prompts)


def parse_mix(spec: str) -> dict[str, float]:
    """'hpsv2.1=1.0,imagereward=0.1' -> {'hpsv2.1': 1.0, 'imagereward': 0.1}; a bare name weighs 1."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        name, _, w = part.partition("=")
        try:
            out[name.strip()] = float(w) if w else 1.0
        except ValueError as err:
            raise ValueError(f"bad reward weight in '{part}': expected name=number") from err
    if not out:
        raise ValueError("empty reward spec")
    return out


def split_spec(spec: str) -> tuple[str, str | None]:
    """'emoji@runs/x/reward' -> ('emoji', 'runs/x/reward'): a registry name with other weights (a folder, file or hub
    id) than its default; a bare name -> (name, None)."""
    name, at, weights = spec.partition("@")
    return name.strip(), (weights.strip() or None) if at else None


def weights_fingerprint(spec: str) -> str:
    """A key that changes when a spec's explicit local weights change (name, size and mtime of their files), so that
    scores cached under 'emoji@folder' are recomputed after the folder is retrained; the spec itself otherwise."""
    _, weights = split_spec(spec)
    path = Path(weights).expanduser() if weights else None
    if path is None or not path.exists():
        return spec
    files = sorted(f for f in ([path] if path.is_file() else path.rglob("*")) if f.is_file())
    return spec + "|" + "|".join(f"{f.relative_to(path) if f != path else f.name}:{f.stat().st_size}:"
                                 f"{f.stat().st_mtime_ns}" for f in files)


def get_reward(name: str, weights: str | None = None) -> nn.Module:
    """A frozen reward model by registry name, 'name@weights' (that reward's loader on other weights: a folder, file
    or hub id), or a weighted mix of either ('a=1,b@folder=0.5'); eval mode, no parameter grads."""
    if "," in name or "=" in name:
        mix = parse_mix(name)
        return RewardMix({k: get_reward(k) for k in mix}, mix)
    if "@" in name:
        name, at_weights = split_spec(name)
        if weights is not None and weights != at_weights:
            raise ModelLoadError(f"reward '{name}@{at_weights}' also given weights={weights}: give one")
        weights = at_weights
    if name not in LOADERS:
        raise ModelLoadError(f"unknown reward '{name}'; known: {', '.join(sorted(LOADERS))}")
    weights = weights or DEFAULT_WEIGHTS.get(name)
    if weights is None:
        raise ModelLoadError(f"reward '{name}' needs weights= (a local folder or hub id)")
    if not Path(weights).exists() and weights.startswith((".", "/", "~")):
        raise ModelLoadError(f"reward weights not found: {weights}")
    return LOADERS[name](weights).eval().requires_grad_(False)
