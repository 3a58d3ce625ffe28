"""Generation for the evaluator and the app: images of a prompt set from a diffusers pipeline, their latency and the
UNet evaluations they took (NFE)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rglcd.sampling import read_prompt

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SEED_STRIDE = 1_000_000  # image i of seed s is drawn with torch.Generator().manual_seed(s * SEED_STRIDE + i)


class UNetCalls:
    """Counts UNet forward calls and the samples they carried: `samples` is the number of UNet evaluations (a
    classifier-free guidance step of one image, one call on a batch of cond + uncond, counts 2)."""

    def __init__(self) -> None:
        self.calls = 0
        self.samples = 0


@contextlib.contextmanager
def count_unet_evals(unet: nn.Module) -> Iterator[UNetCalls]:
    """A forward pre-hook on `unet` for the duration of the block; yields the running counts (the evaluator's NFE,
    the app's NFE under each column)."""
    counts = UNetCalls()

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        sample = args[0] if args else kwargs["sample"]
        counts.calls += 1
        counts.samples += sample.shape[0]

    handle = unet.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield counts
    finally:
        handle.remove()


def image_generators(seed: int, start: int, count: int) -> list[torch.Generator]:
    """One CPU generator per image, so image i of a seed is the same whatever the batch size or device."""
    return [torch.Generator().manual_seed(seed * SEED_STRIDE + i) for i in range(start, start + count)]


def _synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


@torch.no_grad()
def generate_images(pipe: Any, prompts: list[str], steps: int, guidance: float, seed: int, batch_size: int = 64,
                    desc: str = "generate", **extras: Any) -> dict[str, Any]:
    """Images of `prompts` from a diffusers pipeline, timed and counted; `extras` go to every pipeline call
    (`rglcd.sampling.sampling_extras`: fixed timesteps, eta).

    Returns `images` uint8 (N,3,H,W), `seconds_per_image` (wall time of the pipeline calls, text encoding and VAE
    decoding included, after one untimed warm-up call), `nfe` (UNet evaluations per image), `batch_size`.
    """
    device = str(pipe.device)
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is not None:  # emoji to names as in the CLI and the app; other prompts unchanged
        prompts = [read_prompt(tokenizer, p).text for p in prompts]
    pipe(prompts[:1], num_inference_steps=1, guidance_scale=guidance, output_type="pt",
         generator=image_generators(seed, 0, 1), **extras)
    chunks, seconds = [], 0.0
    with count_unet_evals(pipe.unet) as counts:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            batch = prompts[start: start + batch_size]
            _synchronize(device)
            t0 = time.perf_counter()
            images = pipe(batch, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                          generator=image_generators(seed, start, len(batch)), **extras).images
            _synchronize(device)
            seconds += time.perf_counter() - t0
            chunks.append(images.float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu())
    return {"images": torch.cat(chunks), "seconds_per_image": seconds / len(prompts),
            "nfe": counts.samples / len(prompts), "batch_size": batch_size}


@torch.no_grad()
def time_pipeline(pipe: Any, steps: int, guidance: float, batch: int, repeats: int, **inputs: Any
                  ) -> dict[str, Any]:
    """Latency: the median over `repeats` timed pipeline calls of `batch` images (after one untimed warm-up call) of
    seconds per image, each call's figure, and UNet evaluations per image. `inputs`: `prompt=[...]` (batch
    prompts) or `prompt_embeds=...`."""
    device = str(pipe.device)
    kwargs = dict(num_inference_steps=steps, guidance_scale=guidance, output_type="pt", **inputs)
    pipe(generator=image_generators(0, 0, batch), **kwargs)
    times = []
    with count_unet_evals(pipe.unet) as counts:
        for r in range(repeats):
            _synchronize(device)
            t0 = time.perf_counter()
            pipe(generator=image_generators(r + 1, 0, batch), **kwargs)
            _synchronize(device)
            times.append((time.perf_counter() - t0) / batch)
    return {"seconds_per_image": float(np.median(times)), "runs_s_per_image": [round(t, 5) for t in times],
            "nfe": counts.samples / (batch * repeats), "batch_size": batch}
