"""Networks beside the architectures (EDM's `networks.py` role): the consistency-model preconditioning around a
diffusers UNet, the small class-conditional pixel UNet of the Fashion-MNIST experiments, and the small Fashion-MNIST
classifier whose features the Frechet distance there is measured in.
"""

from __future__ import annotations

import torch
from diffusers import ModelMixin, UNet2DModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from torch import nn

from rglcd.consistency import cm_output
from rglcd.schedule import SIGMA_DATA, SIGMA_MIN, cm_scalings, cm_timestep


class CMDenoiser(nn.Module):
    """The consistency function f(x, sigma) = c_skip x + c_out F(c_in x, c_noise(sigma)) of a diffusers UNet.

    `unet` is a UNet2DConditionModel (cond: `encoder_hidden_states=...`, or a family's `unet_inputs`) or a
    UNet2DModel (cond: `class_labels=...`); it gets c_in x (B,C,H,W) and the float timestep c_noise = 250 log sigma
    (`rglcd.schedule.cm_timestep`). The scalings keep the sigma_min offset: f(x, sigma_min) = x exactly.
    """

    def __init__(self, unet: nn.Module, sigma_min: float = SIGMA_MIN, sigma_data: float = SIGMA_DATA) -> None:
        super().__init__()
        self.unet, self.sigma_min, self.sigma_data = unet, sigma_min, sigma_data

    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **cond: torch.Tensor) -> torch.Tensor:
        """f(x, sigma) (B,C,H,W) for noisy samples x (B,C,H,W) and noise levels sigma (B,) in [sigma_min, sigma_max]."""
        sigma = sigma.to(device=x.device, dtype=torch.float32)
        _, _, c_in = cm_scalings(sigma, self.sigma_min, self.sigma_data)
        out = self.unet(c_in.view(-1, 1, 1, 1).to(x) * x, cm_timestep(sigma), **cond).sample
        return cm_output(out, x, sigma, self.sigma_min, self.sigma_data)


def build_class_unet(block_out_channels: tuple[int, ...] = (32, 64, 64), layers_per_block: int = 1,
                     num_classes: int = 10, channels: int = 1, sample_size: int = 32, dropout: float = 0.0,
                     attention_head_dim: int = 8) -> UNet2DModel:
    """A small class-conditional pixel UNet2DModel (class embedding added to the time embedding; attention at the
    lowest resolution only), e.g. 1x32x32 Fashion-MNIST: (32, 64, 64) has about 1.1M parameters."""
    n = len(block_out_channels)
    return UNet2DModel(
        sample_size=sample_size, in_channels=channels, out_channels=channels, layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels), down_block_types=("DownBlock2D",) * (n - 1) + ("AttnDownBlock2D",),
        up_block_types=("AttnUpBlock2D",) + ("UpBlock2D",) * (n - 1), num_class_embeds=num_classes, dropout=dropout,
        attention_head_dim=attention_head_dim, norm_num_groups=min(32, block_out_channels[0]))


class FashionClassifier(ModelMixin, ConfigMixin):
    """A small CNN classifier of 1x32x32 images in [-1,1]: three conv+pool stages and a `feature_dim` hidden layer
    whose activations (B, feature_dim) are the feature space of the Fashion-MNIST Frechet distance ("FD-FMNIST-CNN",
    not FID); `forward` returns logits (B, num_classes)."""

    @register_to_config
    def __init__(self, width: int = 32, feature_dim: int = 128, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(w, 2 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 4 * w, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(4 * w * 16, feature_dim), nn.ReLU())
        self.head = nn.Linear(feature_dim, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate activations (B, feature_dim) of images (B,1,32,32) in [-1,1]."""
        return self.body(images.float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(images))
