"""Image tensors between their stored form and what the models take: uint8 pixels to [-1, 1], the shorter-side
resize + centre crop that the data sources and the CLIP-type rewards both apply, and the per-channel normalisation of
the rewards' image towers (written in torch, differentiable)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_model_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 [0,255] pixels (any shape, e.g. (B,3,H,W)) -> float [-1,1], the range diffusers autoencoders take."""
    return images.float().div(127.5).sub(1.0)


def resize_and_center_crop(images: torch.Tensor, size: int, mode: str = "bilinear") -> torch.Tensor:
    """Float images (B,C,H,W) -> (B,C,size,size): the shorter side resized to `size` (`mode` interpolation,
    antialiased when shrinking), then the centre square. Values are not clamped (bicubic may overshoot)."""
    h, w = images.shape[-2:]
    scale = size / min(h, w)
    new = (max(size, round(h * scale)), max(size, round(w * scale)))
    x = F.interpolate(images, size=new, mode=mode, align_corners=False, antialias=scale < 1)
    top, left = (new[0] - size) // 2, (new[1] - size) // 2
    return x[..., top: top + size, left: left + size]


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """(images - mean) / std per channel of (B,C,H,W), in the images' dtype and device."""
    mean_ = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    std_ = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, -1, 1, 1)
    return (images - mean_) / std_
