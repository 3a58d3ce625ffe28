"""Sampling a family member from prompts (requests checked by `rglcd.inputs.check_request`).

Teachers sample with diffusers' own StableDiffusionPipeline + DDIMScheduler (classifier-free guidance);
`consistency_sample` runs a consistency-model UNet without a text pipeline (class-conditional pixel models).
"""

from __future__ import annotations

from typing import Any

import torch

from rglcd.inputs import InputError, Request, check_request
from rglcd.models import Family

__all__ = ["InputError", "Request", "check_request", "consistency_sample", "generate"]


@torch.no_grad()
def generate(family: Family, member: str, req: Request) -> torch.Tensor:
    """Images (num_images, 3, H, W) in [0,1] for `req`, reproducible from `req.seed`."""
    check_request(family, member, req)
    pipe = family.pipeline(member)
    generator = torch.Generator().manual_seed(req.seed)
    return pipe([req.prompt] * req.num_images, num_inference_steps=req.steps, guidance_scale=req.guidance_scale,
                generator=generator, output_type="pt").images.float().cpu()


@torch.no_grad()
def consistency_sample(unet: torch.nn.Module, scheduler: Any, noise: torch.Tensor, steps: int,
                       generator: torch.Generator | list[torch.Generator] | None = None, **cond: torch.Tensor
                       ) -> torch.Tensor:
    """Clean samples (B,C,H,W) of a consistency-model UNet driven by `rglcd.scheduling_cm.CMScheduler` in `steps`
    steps from standard normal `noise` (B,C,H,W); `cond` goes to the UNet (e.g. `class_labels=`). The loop of
    LatentConsistencyModelPipeline, without text."""
    scheduler.set_timesteps(steps, device=noise.device)
    sample = noise * scheduler.init_noise_sigma
    denoised = sample
    for t in scheduler.timesteps:
        sample, denoised = scheduler.step(unet(sample, t, **cond).sample, t, sample, generator=generator,
                                          return_dict=False)
    return denoised
