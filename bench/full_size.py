"""Full-size Stable Diffusion 2.1-shaped models with random weights, for GPU speed and memory benchmarks that need no
hub download (the real weights would time the same: only shapes and dtypes matter for speed).

Shapes: `sd21-768` (SD 2.1: v-prediction, 768 px, 96x96 latents), `sd21-512` (SD 2.1-base: epsilon, 512 px), and
`tiny` (the same code on small shapes, to check the CPU path). The UNet is SD 2.1's config (block_out_channels
(320, 640, 1280, 1280), cross_attention_dim 1024, attention_head_dim (5, 10, 20, 20), linear projections); the VAE
is SD's AutoencoderKL config; text conditioning is random (B, 77, 1024) states (the text encoder is not timed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Shape:
    resolution: int
    prediction_type: str
    block_out_channels: tuple[int, ...]
    attention_head_dim: tuple[int, ...]
    layers_per_block: int
    context_dim: int
    vae_channels: tuple[int, ...]
    text_length: int = 77


SHAPES: dict[str, Shape] = {
    "sd21-768": Shape(768, "v_prediction", (320, 640, 1280, 1280), (5, 10, 20, 20), 2, 1024, (128, 256, 512, 512)),
    "sd21-512": Shape(512, "epsilon", (320, 640, 1280, 1280), (5, 10, 20, 20), 2, 1024, (128, 256, 512, 512)),
    "tiny": Shape(64, "epsilon", (32, 64), (2, 4), 1, 32, (32, 32, 32, 32)),
}


def build_unet(shape: Shape, time_cond_proj_dim: int | None = None) -> Any:
    """An SD2.1-layout UNet2DConditionModel with random weights (cross-attention in all but the last down block)."""
    from diffusers import UNet2DConditionModel

    n = len(shape.block_out_channels)
    return UNet2DConditionModel(
        sample_size=shape.resolution // 8, in_channels=4, out_channels=4, layers_per_block=shape.layers_per_block,
        block_out_channels=shape.block_out_channels,
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=shape.context_dim, attention_head_dim=shape.attention_head_dim,
        use_linear_projection=True, time_cond_proj_dim=time_cond_proj_dim,
        norm_num_groups=min(32, shape.block_out_channels[0]),
    )


def build_vae(shape: Shape) -> Any:
    """SD's AutoencoderKL layout (factor 8, 4 latent channels) with random weights."""
    from diffusers import AutoencoderKL

    n = len(shape.vae_channels)
    return AutoencoderKL(block_out_channels=shape.vae_channels, down_block_types=("DownEncoderBlock2D",) * n,
                         up_block_types=("UpDecoderBlock2D",) * n, latent_channels=4,
                         layers_per_block=2 if shape.vae_channels[0] >= 128 else 1, sample_size=shape.resolution,
                         norm_num_groups=min(32, shape.vae_channels[0]), scaling_factor=0.18215)


def scheduler_config(shape: Shape) -> dict[str, Any]:
    """SD 2.1's DDIM configuration (scaled-linear betas, 1000 steps) with the shape's prediction type."""
    from diffusers import DDIMScheduler

    return dict(DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              prediction_type=shape.prediction_type, steps_offset=1, clip_sample=False,
                              set_alpha_to_one=False).config)


def build_pipelines(shape: Shape, device: str, dtype: torch.dtype) -> dict[str, Any]:
    """{"teacher": StableDiffusionPipeline + DDIM, "lcm": LatentConsistencyModelPipeline + LCMScheduler} sharing
    one random VAE; the LCM UNet is the teacher's plus a guidance-embedding projection (as LCD builds it). Both
    take `prompt_embeds` (no tokenizer or text encoder)."""
    from diffusers import DDIMScheduler, LatentConsistencyModelPipeline, LCMScheduler, StableDiffusionPipeline

    from rglcd.training.step import student_from_teacher

    with torch.device(device):
        teacher = build_unet(shape)
        student = student_from_teacher(teacher, 256)
        vae = build_vae(shape)
    parts = dict(vae=vae, text_encoder=None, tokenizer=None, safety_checker=None, feature_extractor=None,
                 requires_safety_checker=False)
    config = scheduler_config(shape)
    pipes = {"teacher": StableDiffusionPipeline(unet=teacher, scheduler=DDIMScheduler.from_config(config), **parts),
             "lcm": LatentConsistencyModelPipeline(unet=student, scheduler=LCMScheduler.from_config(config), **parts)}
    for pipe in pipes.values():
        pipe.to(device, dtype)
        pipe.set_progress_bar_config(disable=True)
    return pipes


def text_states(shape: Shape, batch: int, device: str, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """Random (batch, 77, context_dim) text-encoder states standing in for encoded prompts."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, shape.text_length, shape.context_dim, generator=g).to(device, dtype)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()


def peak_memory_mb(device: str) -> float:
    """Peak memory of this process in MiB: torch.cuda.max_memory_allocated on a GPU, else the peak resident set
    size (resource.getrusage ru_maxrss, which never goes down: run one measurement per process)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
