"""The latent proxy reward model of RG-LCD: a small scorer on latents, trained online to agree with an expert reward.

Image tower: a strided conv stack on latents (B,C,h,w), any C and h, w (global average pool), to an embedding.
Text tower: an MLP on the text encoder's states (B,L,D), mean-pooled over tokens. `cosine` is cos(image, text),
`forward` the logit exp(logit_scale) x cos. The student maximises the proxy's score instead of the expert's, so its
gradient never reaches the expert reward model (the RG-LCD paper's defence against reward hacking); the proxy learns
the expert's preferences among candidates (student prediction, EMA-target prediction, data latent).

Two variants (`PROXY_VARIANTS`, the distill trainer's `proxy_variant`):
- "reference" (RG-LCD paper Algorithm 4 and Ji4chenLi/rg-lcd `train_lcm_distill_sd_wds.py`): the student maximises
  the proxy's cosine; the proxy sees unscaled latents (latents / the VAE's scaling_factor); it learns on a random
  subset of the batch, from the expert's logits (`expert_logits`), with the KL of each of the three candidate pairs
  summed (`preference_loss` "pairwise-kl"; "pairwise-ce" is the reference's cross-entropy variant).
- "batch-softmax" (this package's first proxy): the student maximises the logit exp(logit_scale) x cos; scaled
  latents; the whole batch; one three-way KL against softmax(expert's training score / T) ("kl"; "ce": the
  expert's argmax).
A proxy initialises from a pretrained one when given (`LatentProxyReward.from_pretrained`); the reference
fine-tunes a pretrained latent CLIP, which is not part of this package.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from rglcd.loading import ModelLoadError
from rglcd.rewards import RewardMix, training_score
from rglcd.rewards.blip import ImageRewardModel
from rglcd.rewards.clip import ClipReward
from rglcd.rewards.emoji import EmojiReward


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

    def cosine(self, latents: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        """cos(image embedding, text embedding) (B,) in [-1, 1]."""
        img = F.normalize(self.image_tower(latents.float()), dim=-1)
        txt = F.normalize(self.text_tower(text_states.float().mean(1)), dim=-1)
        return (img * txt).sum(-1)

    def forward(self, latents: torch.Tensor, text_states: torch.Tensor) -> torch.Tensor:
        """The logit exp(logit_scale) x cos (B,)."""
        return self.logit_scale.exp() * self.cosine(latents, text_states)

    def save_pretrained(self, folder: str | Path) -> None:
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps({"class": "LatentProxyReward", **self.config}, indent=2))
        save_file({k: v.contiguous() for k, v in self.state_dict().items()}, folder / "model.safetensors")

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "LatentProxyReward":
        from safetensors.torch import load_file

        folder = Path(folder)
        if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
            raise ModelLoadError(f"no proxy reward model in {folder} (config.json + model.safetensors expected)")
        config = json.loads((folder / "config.json").read_text())
        config.pop("class", None)
        model = cls(**config)
        model.load_state_dict(load_file(folder / "model.safetensors"))
        return model


PROXY_VARIANTS = ("reference", "batch-softmax")


def preference_loss(proxy_scores: torch.Tensor, expert_scores: torch.Tensor, kind: str = "kl",
                    temperature: float = 1.0) -> torch.Tensor:
    """Agreement of the proxy with the expert over K candidates per prompt, (B,) from scores (B,K).

    'kl': KL(softmax(expert / T) || softmax(proxy)), the pairwise (K = 2) or listwise preference distribution;
    'ce': cross-entropy of the proxy's softmax against the expert's preferred candidate;
    'pairwise-kl' (candidates student, target and, when there is one, data: K = 2 or 3): the sum over the candidate
    pairs of the two-way KL(softmax(expert pair / T) || softmax(proxy pair)); with K = 3 its batch mean is the
    reference's `rm_loss`; 'pairwise-ce': the sum over the pairs of the two-way cross-entropy, the label being the
    expert's preferred candidate, except that the data latent (candidate 2) wins every pair it is in (the
    reference's CE variant).
    """
    if kind in ("pairwise-kl", "pairwise-ce"):
        k = proxy_scores.shape[-1]
        if k not in (2, 3):
            raise ValueError(f"{kind} needs 2 or 3 candidates (student, target, data), got {k}")
        total = proxy_scores.new_zeros(proxy_scores.shape[0], dtype=torch.float32)
        for i, j in ((i, j) for i in range(k) for j in range(i + 1, k)):
            pair, expert = proxy_scores[:, [i, j]], expert_scores[:, [i, j]]
            if kind == "pairwise-ce" and j == 2:
                expert = torch.stack([torch.zeros_like(expert[:, 0]), torch.ones_like(expert[:, 1])], -1)
            total = total + preference_loss(pair, expert, kind.removeprefix("pairwise-"), temperature)
        return total
    log_q = F.log_softmax(proxy_scores.float(), dim=-1)
    if kind == "kl":
        p = F.softmax(expert_scores.float() / temperature, dim=-1)
        return (p * (p.clamp_min(1e-12).log() - log_q)).sum(-1)
    if kind == "ce":
        return F.nll_loss(log_q, expert_scores.argmax(-1), reduction="none")
    raise ValueError(f"unknown preference loss {kind!r}: use kl, ce, pairwise-kl or pairwise-ce")


def expert_logits(reward: nn.Module, images: torch.Tensor, prompts: list[str], proxy: LatentProxyReward
                  ) -> torch.Tensor:
    """The expert's preference logits (B,) for the "reference" proxy, as the RG-LCD reference forms them (its
    `reward_fn(..., return_logits=True)`, then x the latent RM's scale for ImageReward): CLIP-type rewards
    (hpsv2.1, pickscore, clipscore, emoji) cos x exp(their own logit_scale); ImageReward (clipped or not) its
    training score x exp(the proxy's logit_scale); any other reward its training score; a mix, the weighted sum.
    Images in [0,1] (B,3,H,W)."""
    if isinstance(reward, RewardMix):
        return sum(reward.weights[k] * expert_logits(r, images, prompts, proxy) for k, r in reward.rewards.items())
    if isinstance(reward, ClipReward):
        return reward.model.logit_scale.exp() * training_score(reward, images, prompts)
    if isinstance(reward, EmojiReward):
        return reward.logit_scale.exp() * reward(images, prompts) / 100
    if isinstance(reward, ImageRewardModel):
        return proxy.logit_scale.exp().detach() * training_score(reward, images, prompts)
    return training_score(reward, images, prompts)
