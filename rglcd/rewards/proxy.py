"""The latent proxy reward model of RG-LCD: a small scorer on latents, trained online to agree with an expert reward.

Image tower: a strided conv stack on latents (B,C,h,w), any C and h, w (global average pool), to an embedding.
Text tower: an MLP on the text encoder's states (B,L,D), mean-pooled over tokens. Score: exp(logit_scale) x cos.
The student maximises this score instead of the expert's, so its gradient never reaches the expert reward model
(the RG-LCD paper's defence against reward hacking); the proxy learns the expert's pairwise preferences among
candidates (student prediction, EMA-target prediction, data latent) with `preference_loss`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class LatentProxyReward(nn.Module):
    """Score (B,) of latents (B,C,h,w) under text states (B,L,D); differentiable w.r.t. the latents."""

    def __init__(self, latent_channels: int = 4, text_dim: int = 384, width: int = 64, embed_dim: int = 128) -> None:
        super().__init__()
        self.config = {"latent_channels": latent_channels, "text_dim": text_dim, "width": width,
                       "embed_dim": embed_dim}
        w = width
        self.image_tower = nn.Sequential(
            nn.Conv2d(latent_channels, w, 3, padding=1), nn.SiLU(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.Conv2d(2 * w, 4 * w, 3, stride=2, padding=1), nn.SiLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4 * w, embed_dim))
        self.text_tower = nn.Sequential(nn.Linear(text_dim, 2 * embed_dim), nn.SiLU(),
                                        nn.Linear(2 * embed_dim, embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(math.log(10.0)))

    def forward(self, latents: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        img = F.normalize(self.image_tower(latents.float()), dim=-1)
        txt = F.normalize(self.text_tower(text_states.float().mean(1)), dim=-1)
        return self.logit_scale.exp() * (img * txt).sum(-1)

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"class": "LatentProxyReward", **self.config}, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "LatentProxyReward":
        from safetensors.torch import load_file

        from rglcd.models import ModelLoadError

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ModelLoadError(f"no proxy reward model in {folder} (config.json + model.safetensors expected)")
        config = json.loads((folder / "config.json").read_text())
        config.pop("class", None)
        model = cls(**config)
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model


def preference_loss(proxy_scores: torch.Tensor, expert_scores: torch.Tensor, kind: str = "kl",
                    temperature: float = 1.0) -> torch.Tensor:
    """Agreement of the proxy with the expert over K candidates per prompt, (B,) from scores (B,K).

    'kl': KL(softmax(expert / T) || softmax(proxy)), the pairwise (K = 2) or listwise preference distribution;
    'ce': cross-entropy of the proxy's softmax against the expert's preferred candidate.
    """
    log_q = F.log_softmax(proxy_scores.float(), dim=-1)
    if kind == "kl":
        p = F.softmax(expert_scores.float() / temperature, dim=-1)
        return (p * (p.clamp_min(1e-12).log() - log_q)).sum(-1)
    if kind == "ce":
        return F.nll_loss(log_q, expert_scores.argmax(-1), reduction="none")
    raise ValueError(f"unknown preference loss {kind!r}: use kl or ce")
