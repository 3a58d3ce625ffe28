"""Sampling a family member from prompts, with the input checks every front end (CLI, app) shares.

Teachers sample with diffusers' own StableDiffusionPipeline + DDIMScheduler (classifier-free guidance);
`consistency_sample` runs a consistency-model UNet without a text pipeline (class-conditional pixel models).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rglcd.models import STUDENT_SCHEDULERS, Family, count_tokens

MAX_IMAGES = 64
MAX_GUIDANCE = 30.0


class InputError(ValueError):
    """A request a user can fix (steps, guidance, prompt length, ...); the message says what is allowed."""


@dataclass(frozen=True)
class Request:
    """One generation: `num_images` images of `prompt`, `steps` denoising steps, pipeline guidance scale, seed."""

    prompt: str
    steps: int = 25
    guidance_scale: float = 5.0
    seed: int = 0
    num_images: int = 1


LCM_MAX_STEPS = 50  # LCMScheduler and MLCMScheduler sample on the 50-point skipping-step grid (original_inference_steps)


def check_request(family: Family, member: str, req: Request) -> None:
    """Raise InputError when the request is out of range for this member of the family."""
    if family.member(member).get("kind", member) in STUDENT_SCHEDULERS:
        max_steps = LCM_MAX_STEPS
    else:
        max_steps = int(family.scheduler_config.get("num_train_timesteps", 1000))
    if not 1 <= req.steps <= max_steps:
        raise InputError(f"steps must be between 1 and {max_steps}, got {req.steps}")
    if not 0.0 <= req.guidance_scale <= MAX_GUIDANCE:
        raise InputError(f"guidance scale must be between 0 and {MAX_GUIDANCE:g}, got {req.guidance_scale:g}")
    if not 1 <= req.num_images <= MAX_IMAGES:
        raise InputError(f"number of images must be between 1 and {MAX_IMAGES}, got {req.num_images}")
    if req.seed < 0:
        raise InputError(f"seed must be >= 0, got {req.seed}")
    limit = family.tokenizer.model_max_length
    n = count_tokens(family.tokenizer, req.prompt)
    if n > limit:
        raise InputError(f"prompt is too long: {n} tokens, {family.name} reads at most {limit}")


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
