"""CLIP-architecture rewards on transformers' CLIPModel: HPSv2.1, PickScore and CLIPScore.

No torchvision and no open_clip: preprocessing is torch (shorter side to 224 bicubic, centre crop, OpenAI CLIP
mean/std), so scores are differentiable w.r.t. the images. Score definitions:
- HPSv2.1 (`hpsv2.1`): 100 x cos(image, text) of an open_clip ViT-H-14 whose weights are HPS_v2.1_compressed.pt,
  converted to CLIPModel keys by `open_clip_to_hf`.
- PickScore (`pickscore`): logit_scale.exp() x cos(image, text), yuvalkirstain/PickScore_v1 (already CLIPModel).
- CLIPScore (`clipscore`): 100 x max(cos(image, text), 0), openai/clip-vit-large-patch14.
These are display scores; `ClipReward.training_scale` turns each into the RG-LCD reference's training reward
(plain cos; `rglcd.rewards` states the convention).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rglcd.loading import ModelLoadError, from_pretrained, resolve_source
from rglcd.pixels import normalize, resize_and_center_crop

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
VIT_H_14 = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
HPS_FILE = "HPS_v2.1_compressed.pt"
HPS_REPO = "xswu/HPSv2"


def clip_preprocess(images: torch.Tensor, size: int = 224) -> torch.Tensor:
    """Images in [0,1] (B,3,H,W) -> (B,3,size,size): shorter side to `size` (bicubic), centre crop, normalise."""
    return normalize(resize_and_center_crop(images, size, "bicubic").clamp(0, 1), OPENAI_MEAN, OPENAI_STD)


def open_clip_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Convert an open_clip CLIP state dict (e.g. HPS_v2.1_compressed.pt) to transformers CLIPModel keys.

    open_clip packs q,k,v in `attn.in_proj_*` (nn.MultiheadAttention order) and applies its projections as
    `x @ proj`; CLIPModel has separate q/k/v Linear layers and `Linear` projections (weights transposed).
    """
    sd = {k.removeprefix("module."): v for k, v in state_dict.items()}
    out: dict[str, torch.Tensor] = {}
    layer_names = {"ln_1": "layer_norm1", "ln_2": "layer_norm2", "mlp.c_fc": "mlp.fc1", "mlp.c_proj": "mlp.fc2",
                   "attn.out_proj": "self_attn.out_proj"}
    for src, dst in (("visual.transformer", "vision_model.encoder"), ("transformer", "text_model.encoder")):
        prefix = f"{src}.resblocks."
        layers = sorted({int(k[len(prefix):].split(".")[0]) for k in sd if k.startswith(prefix)})
        for i in layers:
            a, b = f"{prefix}{i}.", f"{dst}.layers.{i}."
            for kind in ("weight", "bias"):
                q, k, v = sd[f"{a}attn.in_proj_{kind}"].chunk(3, dim=0)
                out.update({f"{b}self_attn.q_proj.{kind}": q, f"{b}self_attn.k_proj.{kind}": k,
                            f"{b}self_attn.v_proj.{kind}": v})
                for old, new in layer_names.items():
                    out[f"{b}{new}.{kind}"] = sd[f"{a}{old}.{kind}"]
    renames = {
        "visual.class_embedding": "vision_model.embeddings.class_embedding",
        "visual.positional_embedding": "vision_model.embeddings.position_embedding.weight",
        "visual.conv1.weight": "vision_model.embeddings.patch_embedding.weight",
        "visual.ln_pre.weight": "vision_model.pre_layrnorm.weight",
        "visual.ln_pre.bias": "vision_model.pre_layrnorm.bias",
        "visual.ln_post.weight": "vision_model.post_layernorm.weight",
        "visual.ln_post.bias": "vision_model.post_layernorm.bias",
        "token_embedding.weight": "text_model.embeddings.token_embedding.weight",
        "positional_embedding": "text_model.embeddings.position_embedding.weight",
        "ln_final.weight": "text_model.final_layer_norm.weight",
        "ln_final.bias": "text_model.final_layer_norm.bias",
        "logit_scale": "logit_scale",
    }
    for old, new in renames.items():
        out[new] = sd[old]
    out["visual_projection.weight"] = sd["visual.proj"].T.contiguous()
    out["text_projection.weight"] = sd["text_projection"].T.contiguous()
    return out


def checkpoint_file(weights: str, filename: str, missing: str) -> Path:
    """`weights` if it is a file, else `weights/filename`; a ModelLoadError `missing.format(path=...)` if absent."""
    path = Path(weights).expanduser()
    if path.is_dir():
        path = path / filename
    if not path.is_file():
        raise ModelLoadError(missing.format(path=path))
    return path


def load_every_tensor(model: nn.Module, state_dict: dict[str, torch.Tensor], mismatch: str) -> None:
    """Load a converted state dict that must fill every tensor of `model` (position_ids buffers aside) and no more."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise ModelLoadError(f"{mismatch}: missing {missing[:5]}, unexpected {unexpected[:5]}")


def _features(out: Any) -> torch.Tensor:
    """Projected features from get_*_features: a tensor in transformers 4, an output's pooler_output in 5."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


class ClipReward(nn.Module):
    """`forward(images in [0,1] (B,3,H,W), prompts) -> (B,)`: scale(cos(image, text)) of a CLIPModel."""

    def __init__(self, model: nn.Module, tokenizer: Any, score: str = "hps") -> None:
        super().__init__()
        if score not in ("hps", "pickscore", "clipscore"):
            raise ValueError(f"unknown CLIP score {score!r}")
        self.model, self.tokenizer, self.score = model.eval().requires_grad_(False), tokenizer, score
        self.image_size = int(model.config.vision_config.image_size)

    def embed_images(self, images: torch.Tensor) -> torch.Tensor:
        pixels = clip_preprocess(images, self.image_size).to(self.model.dtype)
        return F.normalize(_features(self.model.get_image_features(pixel_values=pixels)), dim=-1)

    def embed_texts(self, prompts: list[str]) -> torch.Tensor:
        max_len = self.model.config.text_config.max_position_embeddings
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=max_len,
                             return_tensors="pt").to(self.model.device)
        return F.normalize(_features(self.model.get_text_features(input_ids=tok.input_ids)), dim=-1)

    def scale(self, cos: torch.Tensor) -> torch.Tensor:
        if self.score == "hps":
            return 100 * cos
        if self.score == "pickscore":
            return self.model.logit_scale.exp() * cos
        return 100 * cos.clamp_min(0)

    @property
    def training_scale(self) -> float:
        """Display score x this = the training reward: cos (hps, pickscore), max(cos, 0) (clipscore)."""
        if self.score == "pickscore":
            return float(1 / self.model.logit_scale.exp())
        return 0.01

    def score_matrix(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return self.scale(self.embed_images(images) @ self.embed_texts(prompts).T)

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        return self.scale((self.embed_images(images) * self.embed_texts(prompts)).sum(-1))


def load_hf_clip_reward(weights: str, score: str, tokenizer_from: str | None = None) -> ClipReward:
    """A ClipReward from a CLIPModel folder or hub id (PickScore, CLIPScore)."""
    from transformers import AutoTokenizer, CLIPModel

    model = from_pretrained(CLIPModel, resolve_source(weights, None), f"{score} model")
    tok_src = resolve_source(tokenizer_from or weights, None)
    return ClipReward(model, from_pretrained(AutoTokenizer, tok_src, f"{score} tokenizer"), score)


def hps_from_hub() -> Path | None:
    """The hub's HPS_v2.1_compressed.pt (repo xswu/HPSv2, the file the hpsv2 package downloads), from the hub or,
    offline, the hub cache; None when it cannot be had."""
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(HPS_REPO, HPS_FILE))
    except Exception:  # noqa: BLE001 (offline and not cached, or no such repo: the caller names the file to get)
        return None


def load_hps(weights: str, base: str = VIT_H_14) -> ClipReward:
    """HPSv2.1: the ViT-H-14 architecture and tokenizer of `base` with the weights of `HPS_v2.1_compressed.pt`."""
    from transformers import AutoTokenizer, CLIPConfig, CLIPModel

    missing = (f"HPSv2.1 weights not found at {{path}}: download {HPS_FILE} from the hub repo {HPS_REPO} and pass "
               f"its path (plus the {VIT_H_14} config/tokenizer, cached or as a folder)")
    path = hps_from_hub() if weights == HPS_FILE and not Path(weights).exists() else None
    path = path or checkpoint_file(weights, HPS_FILE, missing)
    src = resolve_source(base, None)
    config = from_pretrained(CLIPConfig, src, "HPSv2.1 architecture (CLIP ViT-H-14 config)")
    tokenizer = from_pretrained(AutoTokenizer, src, "HPSv2.1 tokenizer")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = ckpt.get("state_dict", ckpt)
    model = CLIPModel(config)
    load_every_tensor(model, open_clip_to_hf(state), f"{path} does not fit {base}")
    return ClipReward(model, tokenizer, "hps")
