"""LAION aesthetic predictor v2 (improved-aesthetic-predictor) on transformers' CLIP ViT-L/14 vision tower.

Score (`aesthetic`): MLP(e / |e|), e the projected CLIP ViT-L/14 image embedding (openai/clip-vit-large-patch14,
224 bicubic, centre crop, OpenAI mean/std), MLP the head of `sac+logos+ava1-l14-linearMSE.pth`; about 1..10,
higher is better. Prompts are ignored. `ScoreMLP` is also ImageReward's head (rglcd.rewards.blip).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rglcd.loading import from_pretrained, resolve_source
from rglcd.rewards.clip import checkpoint_file, clip_preprocess, load_every_tensor

AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
AESTHETIC_REPO = "github.com/christophschuhmann/improved-aesthetic-predictor"
VIT_L_14 = "openai/clip-vit-large-patch14"


class ScoreMLP(nn.Module):
    """(B, width) -> (B, 1): Linear(width,1024) Dropout Linear(1024,128) Dropout Linear(128,64) Dropout Linear(64,16)
    Linear(16,1), with no activation between them (as trained by both originals); keys `layers.{0,2,4,6,7}.*`."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(width, 1024), nn.Dropout(0.2), nn.Linear(1024, 128), nn.Dropout(0.2),
                                    nn.Linear(128, 64), nn.Dropout(0.1), nn.Linear(64, 16), nn.Linear(16, 1))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)


class AestheticReward(nn.Module):
    """`forward(images in [0,1] (B,3,H,W), prompts ignored) -> (B,)` aesthetic scores."""

    def __init__(self, vision: nn.Module, head: ScoreMLP) -> None:
        super().__init__()
        self.vision, self.head = vision.eval().requires_grad_(False), head.eval().requires_grad_(False)
        self.image_size = int(vision.config.image_size)

    def forward(self, images: torch.Tensor, prompts: list[str] | None = None) -> torch.Tensor:
        pixels = clip_preprocess(images, self.image_size).to(self.vision.dtype)
        embeds = F.normalize(self.vision(pixel_values=pixels).image_embeds, dim=-1)
        return self.head(embeds.to(self.head.layers[0].weight.dtype))[:, 0]


def load_aesthetic(weights: str, base: str = VIT_L_14) -> AestheticReward:
    """The aesthetic predictor: head file `weights` (or a folder holding it) on the CLIP vision tower of `base`."""
    from transformers import CLIPConfig, CLIPVisionModelWithProjection

    path = checkpoint_file(weights, AESTHETIC_FILE, f"aesthetic predictor head not found at {{path}}: download "
                           f"{AESTHETIC_FILE} from {AESTHETIC_REPO} and pass its path (plus the {base} weights, "
                           f"cached or as a folder)")
    src = resolve_source(base, None)
    clip_config = from_pretrained(CLIPConfig, src, "aesthetic predictor image tower config (CLIP ViT-L/14)")
    config = clip_config.vision_config
    config.projection_dim = clip_config.projection_dim  # the vision sub-config's own value may be a stale default
    vision = from_pretrained(CLIPVisionModelWithProjection, src, "aesthetic predictor image tower (CLIP ViT-L/14)",
                             config=config)
    head = ScoreMLP(config.projection_dim)
    state = torch.load(path, map_location="cpu", weights_only=True)
    load_every_tensor(head, state, f"{path} is not an improved-aesthetic-predictor head for {base}")
    return AestheticReward(vision, head)
