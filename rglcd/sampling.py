"""Sampling a family member from prompts (requests checked by `rglcd.inputs.check_request`).

Teachers sample with diffusers' own StableDiffusionPipeline + DDIMScheduler (classifier-free guidance);
`consistency_sample` runs a consistency-model UNet without a text pipeline (class-conditional pixel models).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import torch

from rglcd.data.emoji import emoji_to_names
from rglcd.inputs import InputError, Request, check_request
from rglcd.models import Family

__all__ = ["InputError", "PromptReading", "Request", "check_request", "consistency_sample", "generate",
           "generate_batch", "read_prompt", "sampling_extras", "unconditional_embeds"]


@dataclass(frozen=True)
class PromptReading:
    """What a text encoder reads for a prompt: `text` (the prompt, emoji it cannot read turned into names) and
    one-line `notices` for the user (the rewrite; most words unknown)."""

    text: str
    notices: tuple[str, ...] = ()


def read_prompt(tokenizer: Any, prompt: str) -> PromptReading:
    """The one rule for prompts of every front end (CLI, app, evaluator, `generate`): an emoji that `tokenizer`
    reads as its unknown token ("🍕" is [UNK] to MiniLM) becomes its CLDR name as the emoji captions spell it
    ("pizza"); then a notice if most words are still unknown. A tokenizer without an unknown token (CLIP's byte
    BPE reads every character) and a prompt without emoji are left as they are."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return PromptReading(prompt)

    def unknown(text: str) -> list[bool]:
        ids = tokenizer(text, add_special_tokens=False).input_ids
        return [i == unk for i in ids]

    text = emoji_to_names(prompt, keep=lambda chars: not any(unknown(chars)))
    notices = [f"emoji read as their names: {prompt!r} -> {text!r}"] if text != prompt else []
    words = text.split()
    lost = sum(all(unknown(w)) for w in words)
    if 2 * lost > len(words):
        notices.append(f"{lost} of the prompt's {len(words)} words are unknown to the text encoder (read as "
                       f"{tokenizer.unk_token}): it will not draw them; describe the image in English words")
    return PromptReading(text, tuple(notices))


@torch.no_grad()
def generate(family: Family, member: str, req: Request) -> torch.Tensor:
    """Images (num_images, 3, H, W) in [0,1] for `req`, reproducible from `req.seed`."""
    check_request(family, member, req)
    pipe = family.pipeline(member, eta=req.eta)
    return generate_batch(pipe, [req], extras=sampling_extras(family, member, pipe))[0]


@torch.no_grad()
def generate_batch(pipe: Any, requests: list[Request], prompt_embeds: torch.Tensor | None = None,
                   negative_prompt_embeds: torch.Tensor | None = None, extras: dict[str, Any] | None = None
                   ) -> list[torch.Tensor]:
    """Each request's images (num_images, 3, H, W) in [0,1] from one call of `pipe` for all of them (they share
    steps and guidance scale); each equals `generate`'s for that request alone (within float noise: other batch
    sizes take other kernels). A request draws its noise from one generator seeded with its seed, so one of several
    images must come alone; requests of one image each batch, one generator per row.

    `prompt_embeds` (R,L,D), one row per request (`rglcd.models.encode_prompts` of the prompts as `read_prompt`
    reads them), replaces the pipeline's own text encoding, and `negative_prompt_embeds` (1,L,D)
    (`unconditional_embeds`) its encoding of "" for classifier-free guidance. `extras`: the member's other pipeline
    arguments (`sampling_extras`)."""
    if len(requests) > 1 and any(r.num_images != 1 for r in requests):
        raise ValueError("requests of several images each cannot share a batch: each draws from its own generator")
    counts = [r.num_images for r in requests]
    generators = [torch.Generator().manual_seed(r.seed) for r in requests]
    if prompt_embeds is None:
        text: dict[str, Any] = {"prompt": [read_prompt(pipe.tokenizer, r.prompt).text for r in requests
                                           for _ in range(r.num_images)]}
    else:
        text = {"prompt_embeds": prompt_embeds.repeat_interleave(torch.tensor(counts), dim=0)}
        if negative_prompt_embeds is not None:
            text["negative_prompt_embeds"] = negative_prompt_embeds.expand(sum(counts), -1, -1)
    images = pipe(**text, num_inference_steps=requests[0].steps, guidance_scale=requests[0].guidance_scale,
                  generator=generators[0] if len(generators) == 1 else generators, output_type="pt",
                  **(extras or {})).images
    return list(images.float().cpu().split(counts))


@torch.no_grad()
def unconditional_embeds(pipe: Any, prompt_embeds: torch.Tensor) -> torch.Tensor | None:
    """The states (1,L,D) `pipe` encodes for "" beside prompt states (B,L,D) (classifier-free guidance's
    unconditional, by its own `encode_prompt`, so a sentence-pooling encoder reads it as the pipeline does); None for
    a pipeline that takes no negative prompt (the LCM pipeline)."""
    if "negative_prompt_embeds" not in inspect.signature(pipe).parameters:
        return None
    return pipe.encode_prompt(None, prompt_embeds.device, 1, True, prompt_embeds=prompt_embeds[:1])[1]


def sampling_extras(family: Family, member: str, pipe: Any) -> dict[str, Any]:
    """What `pipe(...)` needs for `member` beside its steps and guidance: `timesteps=` for a fixed-timestep member
    (the pipelines then ignore `num_inference_steps`), and `eta=` from the scheduler's config for a kind that takes
    an eta where the pipeline passes one to `step` (the StableDiffusion pipelines' default, 0, would otherwise
    override TCD's gamma)."""
    spec, own = family.sampler(member), family.defaults(member)
    out: dict[str, Any] = {}
    if own.timesteps is not None:
        out["timesteps"] = list(own.timesteps)
    if spec.eta_option is not None and "eta" in inspect.signature(pipe.__call__).parameters:
        out["eta"] = float(pipe.scheduler.config[spec.eta_option])
    return out


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
