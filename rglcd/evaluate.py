"""Evaluation of a model family across members x step counts: generate, score, tabulate, plot.

    python -m rglcd.evaluate --family emoji-64 --models teacher,lcm,rg-lcm,mlcm --steps 1,2,4,8 \
        --prompts heldout --seeds 0,1 --out results/

Teachers sample at `--teacher-steps` with classifier-free guidance, students at each `--steps`. Per (model, steps):
every reward of the family (mean own-prompt score), prompt following (own prompt vs the other prompts of the set),
a Frechet distance to real images in EfficientNet-Lite0 ImageNet features ("FD-EffNetLite0", not FID), seconds per
image and UNet evaluations per image (NFE), with 95% confidence intervals over prompts. Generated images and their
features and scores are cached per (model, steps, seed) under `<out>/cache/`, so a rerun skips what is done.
Writes `<out>/results.csv`, `results.md`, `reward-vs-steps.png`, `quality-vs-latency.png` and `samples.png`.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import hashlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rglcd.metrics import (FrechetReference, PooledFeatures, bootstrap_ci, high_frequency_energy, normal_ci,
                           pairwise_wins)
from rglcd.models import ModelLoadError

FD_NAME = "FD-EffNetLite0"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
SCORES_VERSION = 2  # bump when score_images gains a metric, so cached scores are recomputed
SEED_STRIDE = 1_000_000  # image i of seed s is drawn with torch.Generator().manual_seed(s * SEED_STRIDE + i)


def score_matrix(reward: nn.Module, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
    """(N images, N prompts) reward scores; one batched call when the reward has `score_matrix`."""
    if hasattr(reward, "score_matrix"):
        return reward.score_matrix(images, prompts)
    return torch.stack([reward(images, [p] * len(images)) for p in prompts], dim=1)


@torch.no_grad()
def prompt_following(reward: nn.Module, images: torch.Tensor, prompts: list[str]) -> dict[str, float]:
    """Does image i score higher under its own prompt i than under the other prompts of the set?

    images: (N,3,H,W) in [0,1], image i made for prompts[i]. Returns
    - `win_rate`: mean over i of the fraction of j != i with R(x_i, p_i) > R(x_i, p_j),
    - `top1`: fraction of images whose own prompt scores highest of all N,
    - `reward`: mean R(x_i, p_i).
    """
    wins = pairwise_wins(score_matrix(reward, images, prompts))
    return {"win_rate": wins["win"].mean().item(), "top1": wins["top1"].mean().item(),
            "reward": wins["own"].mean().item()}


def image_grid(images: torch.Tensor, nrow: int = 8, pad: int = 2) -> np.ndarray:
    """(N,3,H,W) in [0,1] -> uint8 (rows*(H+pad)+pad, nrow*(W+pad)+pad, 3) on white; one image is returned as-is."""
    n, _, h, w = images.shape
    if n == 1:
        pad = 0
    ncol = min(nrow, n)
    rows = (n + ncol - 1) // ncol
    grid = torch.ones(3, rows * (h + pad) + pad, ncol * (w + pad) + pad)
    for i, img in enumerate(images.clamp(0, 1).float().cpu()):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = img
    return (grid.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def save_grid(images: torch.Tensor, path: str | Path, nrow: int = 8) -> Path:
    """Write `image_grid(images)` as PNG (parent folders created)."""
    from PIL import Image

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image_grid(images, nrow)).save(path)
    return path


@torch.no_grad()
def evaluate_prompt_following(family: Any, member: str, reward: nn.Module, prompt_sets: dict[str, list[str]],
                              steps: int, guidance: float, seed: int = 0, grid_path: str | Path | None = None,
                              unet: Any | None = None, kind: str | None = None,
                              scheduler_options: dict[str, Any] | None = None) -> dict[str, float]:
    """`prompt_following` of a family member on each named prompt set (e.g. 16 training, 16 held-out prompts).

    One image per prompt, seed `seed`; keys `{set}_{win_rate,top1,reward}`. With `grid_path`, writes
    `<stem>-<set>.png` beside it. `unet` (and `kind`, `scheduler_options`) override the member's weights (a model
    in training).
    """
    pipe = family.pipeline(member, unet=unet, kind=kind, scheduler_options=scheduler_options)
    out: dict[str, float] = {}
    for split, prompts in prompt_sets.items():
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                      generator=torch.Generator().manual_seed(seed)).images.float().cpu()
        out.update({f"{split}_{k}": v for k, v in prompt_following(reward, images, prompts).items()})
        if grid_path is not None:
            grid_path = Path(grid_path)
            save_grid(images, grid_path.with_name(f"{grid_path.stem}-{split}.png"), nrow=8)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Generation: images, latency and NFE of one (model, steps, seed)


class UNetCalls:
    """Counts UNet forward calls and the samples they carried (CFG batches cond + uncond: 2 samples a call)."""

    def __init__(self) -> None:
        self.calls = 0
        self.samples = 0


@contextlib.contextmanager
def count_unet_evals(unet: nn.Module) -> Iterator[UNetCalls]:
    """A forward pre-hook on `unet` for the duration of the block; yields the running counts."""
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
                    desc: str = "generate") -> dict[str, Any]:
    """Images of `prompts` from a diffusers pipeline, timed and counted.

    Returns `images` uint8 (N,3,H,W), `seconds_per_image` (wall time of the pipeline calls, text encoding and VAE
    decoding included, after one untimed warm-up call), `nfe` (UNet evaluations per image), `batch_size`.
    """
    device = str(pipe.device)
    pipe(prompts[:1], num_inference_steps=1, guidance_scale=guidance, output_type="pt",
         generator=image_generators(seed, 0, 1))
    chunks, seconds = [], 0.0
    with count_unet_evals(pipe.unet) as counts:
        for start in tqdm(range(0, len(prompts), batch_size), desc=desc, leave=False):
            batch = prompts[start: start + batch_size]
            _synchronize(device)
            t0 = time.perf_counter()
            images = pipe(batch, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                          generator=image_generators(seed, start, len(batch))).images
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


# ---------------------------------------------------------------------------------------------------------------
# Scoring: rewards, prompt following and features of a set of images


def efficientnet_lite0_features() -> PooledFeatures:
    """The frozen feature extractor of FD-EffNetLite0: ImageNet EfficientNet-Lite0, 224 px, pooled (B,1280)."""
    from rglcd.rewards.emoji import load_efficientnet_lite0, preprocess

    return PooledFeatures(load_efficientnet_lite0(), preprocess, 224, FD_NAME)


def reward_names(family: Any, extra: tuple[str, ...] = ()) -> list[str]:
    """Names of the rewards to report, without loading them: the family's (each component of a mix), then `extra`."""
    from rglcd.rewards import parse_mix

    spec = str(family.spec.get("reward", "")).partition("=")[0]
    names = list(parse_mix(spec)) if "," in spec or "=" in spec else [spec]
    return names + [n for n in extra if n not in names]


def family_rewards(family: Any, extra: tuple[str, ...] = ()) -> tuple[nn.Module, dict[str, nn.Module]]:
    """(the family's reward, {name: reward} for every name of `reward_names`)."""
    from rglcd.rewards import RewardMix, get_reward

    main = family.reward()
    names = reward_names(family, extra)
    rewards = dict(main.rewards.items()) if isinstance(main, RewardMix) else {names[0]: main}
    rewards.update({n: get_reward(n) for n in names if n not in rewards})
    return main, rewards


def prompt_groups(n: int, group: int, seed: int = 0) -> list[torch.Tensor]:
    """Index groups within which prompt following is measured: all n together when group is 0 or >= n, else a
    fixed random partition into groups of `group` (a last group of one joins the one before)."""
    if group <= 0 or group >= n:
        return [torch.arange(n)]
    parts = list(torch.randperm(n, generator=torch.Generator().manual_seed(seed)).split(group))
    if len(parts[-1]) < 2:
        parts[-2:] = [torch.cat(parts[-2:])]
    return parts


@torch.no_grad()
def score_images(images: torch.Tensor, prompts: list[str], pf_reward: nn.Module, rewards: dict[str, nn.Module],
                 extractor: nn.Module, batch_size: int = 64, pf_group: int = 0) -> dict[str, torch.Tensor]:
    """Per-image metrics of uint8 images (N,3,H,W), image i made for prompts[i]: `reward_<name>` (N,) own-prompt
    scores, `pf_win` / `pf_top1` (N,) prompt following of `pf_reward` within `prompt_groups`, `hf_share` (N,) the
    share of spectral energy above 0.25 cycles/pixel (a reward-hacking symptom), `features` (N,D)."""
    device = next(extractor.parameters()).device
    x = images.to(device).float() / 255
    out: dict[str, list[torch.Tensor]] = {f"reward_{n}": [] for n in rewards}
    out["features"], out["hf_share"] = [], []
    for start in range(0, len(x), batch_size):
        xb, pb = x[start: start + batch_size], prompts[start: start + batch_size]
        for name, reward in rewards.items():
            out[f"reward_{name}"].append(reward(xb, pb).float().cpu())
        out["features"].append(extractor(xb).float().cpu())
        out["hf_share"].append(high_frequency_energy(xb).float().cpu())
    result = {k: torch.cat(v) for k, v in out.items()}
    result["pf_win"], result["pf_top1"] = torch.zeros(len(x)), torch.zeros(len(x))
    for idx in prompt_groups(len(x), pf_group):
        wins = pairwise_wins(score_matrix(pf_reward, x[idx.to(device)], [prompts[i] for i in idx]).float().cpu())
        result["pf_win"][idx], result["pf_top1"][idx] = wins["win"], wins["top1"]
    return result


def iter_image_folder(folder: Path, size: int, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """uint8 batches (B,3,size,size) of the images in `folder` (sorted, recursive): centre-cropped square, bicubic."""
    from PIL import Image

    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ModelLoadError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    for start in range(0, len(files), batch_size):
        batch = []
        for path in files[start: start + batch_size]:
            img = Image.open(path).convert("RGB")
            side = min(img.size)
            left, top = (img.width - side) // 2, (img.height - side) // 2
            img = img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)
            batch.append(torch.from_numpy(np.array(img)).permute(2, 0, 1))
        yield torch.stack(batch)


# ---------------------------------------------------------------------------------------------------------------
# The harness


@dataclass
class EvalConfig:
    """What `python -m rglcd.evaluate` evaluates; every field is a command-line flag."""

    family: str = "emoji-64"
    models: tuple[str, ...] = ()  # empty: every member of the family
    steps: tuple[int, ...] = (1, 2, 4, 8)
    teacher_steps: tuple[int, ...] = (25, 50)
    guidance: float = 5.0  # students (the LCM guidance embedding is w = guidance - 1)
    teacher_guidance: float = 5.0  # classifier-free guidance of teachers
    prompts: str = "heldout"
    prompt_source: str | None = None
    max_prompts: int | None = None
    seeds: tuple[int, ...] = (0, 1)
    batch_size: int = 64
    reference: str | None = None  # folder of real images for the Frechet distance (default: the prompt set's own)
    rewards: tuple[str, ...] = ()  # registry rewards to report besides the family's
    pf_group: int = 0  # prompt following within groups of this many prompts (0: all prompts of the set)
    bootstrap: int = 200
    latency_batch: int = 8  # latency: median of `latency_repeats` calls of this many images
    latency_repeats: int = 5
    baseline: str | None = None  # "model:steps" for paired differences; default: the teacher at its most steps
    skip_missing: bool = False
    sample_prompts: int = 8
    out: str = "results"
    device: str = "cpu"
    dtype: str = "fp32"


@dataclass(frozen=True)
class Run:
    """One row of the results: a member sampled at one step count and guidance scale."""

    model: str
    kind: str
    steps: int
    guidance: float


def plan_runs(family: Any, cfg: EvalConfig) -> list[Run]:
    """The (model, steps) grid, checked: unknown members fail (or are skipped with a warning under
    `skip_missing`), step counts and guidance scales out of a member's range raise `InputError`."""
    from rglcd.sampling import Request, check_request

    runs = []
    for model in cfg.models or tuple(family.members):
        if model not in family.members and cfg.skip_missing:
            print(f"warning: family {family.name} has no model '{model}'; skipped", file=sys.stderr)
            continue
        entry = family.member(model)
        if "train" in entry:  # a member with no public checkpoint (real families): say how to get it
            message = f"family {family.name}: '{model}' is not published: train it with {entry['train']}"
            if cfg.models and not cfg.skip_missing:
                raise ModelLoadError(message)
            print(f"warning: {message}; skipped", file=sys.stderr)
            continue
        kind = entry.get("kind", model)
        teacher = kind == "teacher"
        guidance = cfg.teacher_guidance if teacher else cfg.guidance
        for steps in cfg.teacher_steps if teacher else cfg.steps:
            check_request(family, model, Request("", steps, guidance))
            runs.append(Run(model, kind, steps, guidance))
    if not runs:
        raise ModelLoadError(f"nothing to evaluate: none of {', '.join(cfg.models)} is in family {family.name}")
    return runs


WEIGHT_SUFFIXES = (".safetensors", ".bin")
HASH_LIMIT = 256 * 2**20  # larger weight files are identified by size and mtime instead of content


def file_identity(path: Path) -> str:
    """sha1 of a file's content, or 'size:mtime' for files over HASH_LIMIT (a hub-size UNet)."""
    stat = path.stat()
    if stat.st_size > HASH_LIMIT:
        return f"{stat.st_size}:{stat.st_mtime_ns}"
    return hashlib.sha1(path.read_bytes()).hexdigest()


def member_fingerprint(family: Any, model: str) -> str:
    """The member's family entry plus the identity of its local config and weight files (a re-export changes it;
    model cards and metrics files do not)."""
    from rglcd.models import resolve_source

    entry = family.member(model)
    files = []
    for key in ("unet", "lora"):
        if key in entry:
            src = resolve_source(entry[key], family.root)
            if src.is_local:
                folder = Path(src.location, src.subfolder or "")
                files += [(p.name, file_identity(p)) for p in sorted(folder.glob("*"))
                          if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"]
    return json.dumps([entry, files], sort_keys=True, default=str)


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts, for cache file names."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`torch.load(path)` if it exists, else `compute()` saved there atomically."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(value, tmp)
    tmp.replace(path)
    return value


def per_prompt_metrics(scores: dict[str, Any]) -> list[str]:
    """The per-image metrics compared between runs: every reward, the prompt-following win rate and (when scored)
    the high-frequency share."""
    return [k for k in scores if k.startswith("reward_")] + ["pf_win"] + [k for k in ("hf_share",) if k in scores]


def per_prompt_mean(per_seed: list[dict[str, Any]], key: str) -> torch.Tensor:
    """(N,) each prompt's mean of metric `key` over the seeds."""
    return torch.stack([s[key] for s in per_seed]).mean(0)


def paired_differences(per_seed: list[dict[str, Any]], base_seeds: list[dict[str, Any]], base: str
                       ) -> dict[str, Any]:
    """`<metric>_vs_base` and its 95% half-width: the mean over prompts of (run - baseline) per-prompt means, on
    the same prompts and seeds, so prompt difficulty cancels out (much narrower than the two rows' intervals)."""
    out: dict[str, Any] = {"baseline": base}
    for key in per_prompt_metrics(per_seed[0]):
        diff = per_prompt_mean(per_seed, key) - per_prompt_mean(base_seeds, key)
        out[f"{key}_vs_base"], out[f"{key}_vs_base_ci95"] = normal_ci(diff)
    return out


class Evaluation:
    """Generates and scores every (run, seed) of a config, cached under `<out>/cache`, and summarises them."""

    def __init__(self, cfg: EvalConfig) -> None:
        from rglcd.data.prompts import load_prompt_set
        from rglcd.models import load_family

        self.cfg = cfg
        self.out = Path(cfg.out)
        self.family = load_family(cfg.family)
        self.runs = plan_runs(self.family, cfg)
        self.prompt_set = load_prompt_set(cfg.prompts, cfg.prompt_source, cfg.max_prompts)
        if len(self.prompt_set.prompts) < 2:
            raise ModelLoadError(f"prompt set {cfg.prompts} has {len(self.prompt_set.prompts)} prompt(s); need 2+")
        self.prompts_key = digest(self.prompt_set.prompts)
        self.baseline = self.baseline_run()  # checked before any generation
        self._scorers: tuple[nn.Module, dict[str, nn.Module], nn.Module] | None = None

    @property
    def scorers(self) -> tuple[nn.Module, dict[str, nn.Module], nn.Module]:
        """(prompt-following reward, {name: reward}, feature extractor), loaded on first use, on the device."""
        if self._scorers is None:
            pf_reward, rewards = family_rewards(self.family, self.cfg.rewards)
            device = self.cfg.device
            self._scorers = (pf_reward.to(device), {k: r.to(device) for k, r in rewards.items()},
                             efficientnet_lite0_features().to(device))
        return self._scorers

    def generation_path(self, run: Run, seed: int) -> Path:
        key = digest(self.family.name, member_fingerprint(self.family, run.model), run, seed, self.prompts_key,
                     self.cfg.device, self.cfg.dtype)
        return self.out / "cache" / run.model / f"steps{run.steps}-cfg{run.guidance:g}-seed{seed}-{key}.pt"

    def generated(self, run: Run, seed: int) -> dict[str, Any]:
        """Images, latency and NFE of (run, seed), from the cache or generated now."""

        def compute() -> dict[str, Any]:
            pipe = self.family.pipeline(run.model).to(self.cfg.device, DTYPES[self.cfg.dtype])
            return generate_images(pipe, self.prompt_set.prompts, run.steps, run.guidance, seed, self.cfg.batch_size,
                                   desc=f"{run.model} {run.steps} steps seed {seed}")

        return cached(self.generation_path(run, seed), compute)

    def latency(self, run: Run) -> dict[str, Any]:
        """`time_pipeline` of the run on the first `latency_batch` prompts, from the cache or measured now."""
        cfg = self.cfg
        prompts = self.prompt_set.prompts[:cfg.latency_batch]
        key = digest(self.family.name, member_fingerprint(self.family, run.model), run, prompts, cfg.device,
                     cfg.dtype, cfg.latency_repeats)
        path = self.out / "cache" / run.model / f"steps{run.steps}-cfg{run.guidance:g}-latency-{key}.pt"

        def compute() -> dict[str, Any]:
            pipe = self.family.pipeline(run.model).to(cfg.device, DTYPES[cfg.dtype])
            return time_pipeline(pipe, run.steps, run.guidance, len(prompts), cfg.latency_repeats, prompt=prompts)

        return cached(path, compute)

    def scored(self, run: Run | None, seed: int) -> dict[str, torch.Tensor]:
        """Per-image metrics of (run, seed); run None scores the prompt set's paired real images."""
        gen_path = (self.generation_path(run, seed) if run else
                    self.out / "cache" / f"reference-{self.prompts_key}-{self.family.resolution}.pt")
        key = digest(reward_names(self.family, self.cfg.rewards), FD_NAME, self.cfg.pf_group, self.cfg.device,
                     SCORES_VERSION)
        path = gen_path.with_name(f"{gen_path.stem}-scores-{key}.pt")

        def compute() -> dict[str, torch.Tensor]:
            images = self.generated(run, seed)["images"] if run else self.paired_reference()
            pf_reward, rewards, extractor = self.scorers
            return score_images(images, self.prompt_set.prompts, pf_reward, rewards, extractor, self.cfg.batch_size,
                                self.cfg.pf_group)

        return cached(path, compute)

    def paired_reference(self) -> torch.Tensor:
        assert self.prompt_set.reference is not None
        return self.prompt_set.reference(self.family.resolution)

    def reference_features(self) -> tuple[torch.Tensor, str] | None:
        """(reference features (M,D), description) for the Frechet distance, or None when there is no reference."""
        if self.cfg.reference:
            folder = Path(self.cfg.reference).expanduser()
            if not folder.is_dir():
                raise ModelLoadError(f"reference image folder not found: {folder}")
            path = self.out / "cache" / f"reference-folder-{digest(str(folder.resolve()), self.family.resolution)}.pt"

            def compute() -> dict[str, torch.Tensor]:
                extractor = self.scorers[2]
                device = next(extractor.parameters()).device
                feats = [extractor(b.to(device).float() / 255).float().cpu()
                         for b in tqdm(iter_image_folder(folder, self.family.resolution, self.cfg.batch_size),
                                       desc="reference", leave=False)]
                return {"features": torch.cat(feats)}

            with torch.no_grad():
                feats = cached(path, compute)["features"]
            return feats, f"{len(feats)} images from {folder} (centre-cropped, {self.family.resolution} px)"
        if self.prompt_set.reference is None:
            return None
        feats = self.scored(None, 0)["features"]
        return feats, f"{len(feats)} paired real images of the prompt set ({self.family.resolution} px)"

    def rows(self, reference: tuple[torch.Tensor, str] | None) -> list[dict[str, Any]]:
        """One summary row per run (plus a `real` row for the paired real images), computing what is missing;
        `reference` as from `reference_features`."""
        fd_ref = FrechetReference.from_features(reference[0]) if reference is not None else None
        jobs = [(run, seed) for run in self.runs for seed in self.cfg.seeds]
        per_run: dict[Run, list[dict[str, Any]]] = {run: [] for run in self.runs}
        for run, seed in tqdm(jobs, desc="evaluate"):
            scores = self.scored(run, seed)
            timing = {k: v for k, v in self.generated(run, seed).items() if k != "images"}  # keep no images around
            per_run[run].append({**timing, **scores})
        latency = {run: self.latency(run) for run in tqdm(self.runs, desc="latency")}
        rows = [self.summarize(run, per_seed, fd_ref, latency[run]) for run, per_seed in per_run.items()]
        base = self.baseline
        if base is not None:
            for row, (run, per_seed) in zip(rows, per_run.items()):
                if run != base:
                    row.update(paired_differences(per_seed, per_run[base], f"{base.model} {base.steps}"))
        if self.prompt_set.reference is not None and not self.cfg.reference:
            rows.append(self.summarize(None, [self.scored(None, 0)], None, None))
        return rows

    def baseline_run(self) -> Run | None:
        """The run every other run is compared with prompt by prompt: `cfg.baseline` ("model:steps", or "model": its
        largest step count), else the teacher at its largest step count, else None."""
        from rglcd.sampling import InputError

        if self.cfg.baseline:
            model, _, steps = self.cfg.baseline.partition(":")
            match = [r for r in self.runs if r.model == model and (not steps or str(r.steps) == steps)]
            if not match:
                runs = ", ".join(f"{r.model}:{r.steps}" for r in self.runs)
                raise InputError(f"baseline {self.cfg.baseline} is not among the evaluated runs ({runs})")
            return max(match, key=lambda r: r.steps)
        teachers = [r for r in self.runs if r.kind == "teacher"]
        return max(teachers, key=lambda r: r.steps) if teachers else None

    def summarize(self, run: Run | None, per_seed: list[dict[str, Any]], fd_ref: FrechetReference | None,
                  latency: dict[str, Any] | None) -> dict[str, Any]:
        """Means and 95% half-widths over prompts (each prompt's mean over seeds); FD with a bootstrap over prompts
        (the reference fixed)."""
        n = len(self.prompt_set.prompts)
        row: dict[str, Any] = {"family": self.family.name, "prompts": self.prompt_set.name, "n_prompts": n,
                               "seeds": len(per_seed), "n_images": n * len(per_seed),
                               "model": run.model if run else "real", "kind": run.kind if run else "real",
                               "steps": run.steps if run else "", "guidance": run.guidance if run else ""}
        if run is not None and latency is not None:
            row["nfe"] = per_seed[0]["nfe"]
            row["seconds_per_image"] = latency["seconds_per_image"]
            row["latency_batch"] = latency["batch_size"]
            row["generation_s_per_image"] = float(np.mean([s["seconds_per_image"] for s in per_seed]))
            row["generation_batch"] = per_seed[0]["batch_size"]
        for key in per_prompt_metrics(per_seed[0]) + ["pf_top1"]:
            row[key], row[f"{key}_ci95"] = normal_ci(per_prompt_mean(per_seed, key))
        if fd_ref is not None:
            feats = torch.stack([s["features"] for s in per_seed])  # (S, N, D)
            row["fd"], row["fd_ci95"] = bootstrap_ci(lambda idx: fd_ref.distance(feats[:, idx].flatten(0, 1)), n,
                                                     self.cfg.bootstrap)
        return row

    def sample_rows(self) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
        """([(label, uint8 images (k,3,H,W))] per run (and the real images), their k prompts): `sample_prompts`
        evenly spaced prompts, first seed."""
        from rglcd.data.prompts import even_subset

        idx = even_subset(list(range(len(self.prompt_set.prompts))), self.cfg.sample_prompts)
        rows = [(f"{r.model}, {r.steps} step{'s' if r.steps > 1 else ''}",
                 self.generated(r, self.cfg.seeds[0])["images"][idx]) for r in self.runs]
        if self.prompt_set.reference is not None:
            rows.append(("real", self.paired_reference()[idx]))
        return rows, [self.prompt_set.prompts[i] for i in idx]


# ---------------------------------------------------------------------------------------------------------------
# Outputs


def percent(key: str) -> bool:
    return key.startswith(("pf_", "hf_"))


def format_cell(row: dict[str, Any], key: str, sign: str = "") -> str:
    """'12.3 ± 0.4' (percent for prompt following and high-frequency share, the latter to 2 decimals; sign="+"
    writes '+1.2'), '' when the row lacks the metric."""
    if key not in row or row[key] == "":
        return ""
    scale, digits = (100 if percent(key) else 1), (2 if key.startswith("hf_") else 1)
    value, half = row[key] * scale, row.get(f"{key}_ci95", float("nan")) * scale
    return f"{value:{sign}.{digits}f}" if np.isnan(half) else f"{value:{sign}.{digits}f} ± {half:.{digits}f}"


def metric_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(key, header) of the metric columns present in the rows, rewards first."""
    keys = [k for k in rows[0] if k.startswith("reward_") and not k.endswith(("_ci95", "_vs_base"))]
    cols = [(k, f"{k[len('reward_'):]} reward") for k in keys]
    cols += [("pf_win", "prompt following win rate (%)"), ("pf_top1", "prompt following top-1 (%)")]
    if any("hf_share" in r for r in rows):
        cols.append(("hf_share", "high-frequency share (%)"))
    if any("fd" in r for r in rows):
        cols.append(("fd", FD_NAME))
    return cols


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """The results as one markdown table: model, steps, guidance, NFE, s/image, then every metric ± 95% CI."""
    cols = metric_columns(rows)
    head = ["model", "steps", "guidance", "NFE", "s / image"] + [h for _, h in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], str(row["steps"]), f"{row['guidance']:g}" if row["guidance"] != "" else "",
                 f"{row['nfe']:g}" if "nfe" in row else "",
                 f"{row['seconds_per_image']:.4f}" if "seconds_per_image" in row else ""]
        lines.append("| " + " | ".join(cells + [format_cell(row, k) for k, _ in cols]) + " |")
    return "\n".join(lines)


def paired_table(rows: list[dict[str, Any]]) -> str:
    """Paired differences against the baseline run (rows that have them), '' when there are none."""
    paired = [r for r in rows if "baseline" in r]
    if not paired:
        return ""
    keys = [k[:-len("_vs_base")] for k in paired[0] if k.endswith("_vs_base")]
    head = ["model", "steps"] + [f"{h} - {paired[0]['baseline']}" for k, h in metric_columns(rows) if k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in paired:
        cells = [row["model"], str(row["steps"])] + [format_cell(row, f"{k}_vs_base", "+") for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_description(device: str) -> str:
    """'2-core CPU (x86_64), torch 2.13.0+cpu, 1 thread' or the GPU name."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    threads = torch.get_num_threads()
    return (f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}, "
            f"{threads} thread{'s' if threads > 1 else ''}")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def split_note(prompt_set: str) -> str:
    """Which held-out half a table is from and what it may be used for (every results.md says it)."""
    free = " under evaluation-only phrasings no training run used" if prompt_set.endswith("-free") else ""
    if prompt_set.startswith("heldout-val"):
        return f"validation half of the held-out concepts{free}: choices (recipe, beta, checkpoint) are made here."
    if prompt_set.startswith("heldout-test"):
        return f"test half of the held-out concepts{free}: reported once per shipped model, never chosen on."
    if prompt_set == "heldout":
        return "all 217 held-out concepts (both halves: not a clean test of any choice made on them)."
    return f"`{prompt_set}` (not a held-out split)."


def write_markdown(ev: Evaluation, rows: list[dict[str, Any]], path: Path, reference: str | None,
                   command: str) -> None:
    cfg, ps = ev.cfg, ev.prompt_set
    seeds = ", ".join(map(str, cfg.seeds))
    notes = [
        f"# {ev.family.name}: {', '.join(dict.fromkeys(r.model for r in ev.runs))} on `{ps.name}`",
        "",
        f"- Command: `{command}`",
        f"- Date: {date.today().isoformat()}; machine: {machine_description(cfg.device)}.",
        f"- Prompts: {len(ps.prompts)} from {ps.source}; seeds {seeds} (one image per prompt and seed: "
        f"{len(ps.prompts) * len(cfg.seeds)} images per row; image i of seed s uses seed s x {SEED_STRIDE} + i).",
        f"- Split: {split_note(ps.name)}",
        f"- Guidance: teachers {cfg.teacher_guidance:g} (classifier-free, 2 UNet evaluations per step), students "
        f"{cfg.guidance:g} (LCM guidance embedding w = {cfg.guidance - 1:g}). NFE: UNet evaluations per image.",
        f"- s / image: latency, the median of {cfg.latency_repeats} timed diffusers pipeline calls of "
        f"{cfg.latency_batch} images (text encoding and VAE decoding included, after a warm-up call), per image, "
        f"{cfg.device} {cfg.dtype}; results.csv also has the mean time per image of the generation itself "
        f"(batch {cfg.batch_size}).",
        "- Rewards: mean own-prompt score (the family's reward; emoji: 100 x cosine). Prompt following: for each "
        "image, the share of the other prompts " + (f"of its group of {cfg.pf_group}" if cfg.pf_group else
                                                    f"of the set ({len(ps.prompts) - 1})")
        + " that the family reward scores lower than its own prompt (win rate), and the share of images whose "
          "own prompt scores highest (top-1).",
        "- High-frequency share: the share of each image's spectral energy (channel means removed) above 0.25 "
        "cycles/pixel (`rglcd.metrics.high_frequency_energy`), a reward-hacking symptom: adversarial patterns raise it.",
        f"- {FD_NAME}: Frechet distance between Gaussians fitted to ImageNet EfficientNet-Lite0 pooled features "
        f"(1280-d, 224 px) of the generated images and of {reference or 'no reference (not computed)'}; not FID "
        "(not Inception features), and biased upward when the image count is below the feature dimension, so "
        "compare it only between rows of one table.",
        f"- ± : 95% confidence half-widths over prompts (normal approximation of each prompt's mean over seeds); for "
        f"{FD_NAME} a normal bootstrap over prompts ({cfg.bootstrap} resamples, reference fixed).",
        "",
        markdown_table(rows),
        "",
    ]
    paired = paired_table(rows)
    if paired:
        base = next(r["baseline"] for r in rows if "baseline" in r)
        notes += [f"Paired differences against {base}: each prompt's mean over "
                  "seeds minus the baseline's on the same prompt, averaged over prompts, with 95% half-widths of "
                  "those differences.", "", paired, ""]
    path.write_text("\n".join(notes))


def plot_results(rows: list[dict[str, Any]], out: Path, main_reward: str) -> list[Path]:
    """reward-vs-steps.png (reward, prompt following, FD against steps) and quality-vs-latency.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    models = [r for r in rows if r["kind"] != "real"]
    reference = next((r for r in rows if r["kind"] == "real"), None)
    panels = [(f"reward_{main_reward}", f"{main_reward} reward"), ("pf_win", "prompt following win rate (%)")]
    if any("fd" in r for r in models):
        panels.append(("fd", f"{FD_NAME} (lower is better)"))

    def series(key: str, x_key: str) -> Iterator[tuple[str, list, list, list, list]]:
        for model in dict.fromkeys(r["model"] for r in models):
            pts = sorted((r for r in models if r["model"] == model), key=lambda r: r[x_key])
            scale = 100 if percent(key) else 1
            yield (model, [r[x_key] for r in pts], [r[key] * scale for r in pts],
                   [r[f"{key}_ci95"] * scale for r in pts], [r["steps"] for r in pts])

    paths = []
    for name, x_key, x_label in (("reward-vs-steps.png", "steps", "sampling steps"),
                                 ("quality-vs-latency.png", "seconds_per_image", "seconds per image")):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
        for ax, (key, title) in zip(np.atleast_1d(axes), panels):
            for model, xs, ys, errs, steps in series(key, x_key):
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=model)
                if x_key != "steps":
                    for x, y, k in zip(xs, ys, steps):
                        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if reference is not None and key in reference:
                ax.axhline(reference[key] * (100 if percent(key) else 1), color="grey", ls="--", lw=1,
                           label="real images")
            ax.set_xscale("log", base=2 if x_key == "steps" else 10)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            if x_key == "steps":
                ax.set_xticks(sorted({r["steps"] for r in models}), [str(s) for s in sorted({r["steps"]
                                                                                                for r in models})])
            ax.set_xlabel(x_label + (" (labels: steps)" if x_key != "steps" else ""))
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
    return paths


def plot_samples(sample_rows: list[tuple[str, torch.Tensor]], prompts: list[str], path: Path) -> Path:
    """One labelled grid: a row of images per (model, steps), a column per prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(sample_rows[0][1])
    grid = image_grid(torch.cat([imgs.float() / 255 for _, imgs in sample_rows]), nrow=k, pad=2)
    cell = grid.shape[0] / len(sample_rows)
    fig, ax = plt.subplots(figsize=(1.0 + grid.shape[1] / 80, grid.shape[0] / 80))
    ax.imshow(grid)
    ax.set_yticks([cell * (i + 0.5) for i in range(len(sample_rows))], [label for label, _ in sample_rows],
                  fontsize=7)
    ax.set_xticks([grid.shape[1] / k * (j + 0.5) for j in range(k)], prompts[:k], fontsize=6, rotation=30,
                  ha="right")
    ax.tick_params(length=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_evaluation(cfg: EvalConfig, command: str = "python -m rglcd.evaluate") -> list[dict[str, Any]]:
    """Evaluate, write every output under `cfg.out`, return the summary rows."""
    ev = Evaluation(cfg)
    out = ev.out
    out.mkdir(parents=True, exist_ok=True)
    reference = ev.reference_features()
    rows = ev.rows(reference)
    write_csv(rows, out / "results.csv")
    write_markdown(ev, rows, out / "results.md", reference[1] if reference else None, command)
    plot_results(rows, out, reward_names(ev.family, cfg.rewards)[0])
    plot_samples(*ev.sample_rows(), out / "samples.png")
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return rows


def int_list(text: str) -> tuple[int, ...]:
    """'1,2,4,8' -> (1, 2, 4, 8)."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from err


def name_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m rglcd.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = EvalConfig()
    p.add_argument("--family", default=d.family, help="preset name, family.json or folder")
    p.add_argument("--models", type=name_list, default=d.models, help="comma-separated members (default: all)")
    p.add_argument("--steps", type=int_list, default=d.steps, help="student step counts (default 1,2,4,8)")
    p.add_argument("--teacher-steps", type=int_list, default=d.teacher_steps, help="teacher steps (default 25,50)")
    p.add_argument("--guidance", type=float, default=d.guidance, help="student guidance scale (default 5)")
    p.add_argument("--teacher-guidance", type=float, default=d.teacher_guidance, help="teacher CFG scale (default 5)")
    p.add_argument("--prompts", default=d.prompts,
                   help="heldout | heldout-val | heldout-test | heldout-val-free | heldout-test-free | train | eval-heldout | eval-train | hpsv2[:style] | parti[:category] | coco | "
                        "file:PATH")
    p.add_argument("--verbose", action="store_true", help="show the libraries' loading bars and warnings")
    p.add_argument("--prompt-source", default=None, help="local file/folder or hub:<dataset id> for benchmarks")
    p.add_argument("--max-prompts", type=int, default=None, help="evenly spaced subset of the prompt set")
    p.add_argument("--seeds", type=int_list, default=d.seeds, help="comma-separated seeds (default 0,1)")
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--reference", default=None, help="folder of real images for the Frechet distance")
    p.add_argument("--rewards", type=name_list, default=d.rewards, help="more registry rewards to report")
    p.add_argument("--pf-group", type=int, default=d.pf_group, help="prompt following within groups of N (0: all)")
    p.add_argument("--bootstrap", type=int, default=d.bootstrap, help="bootstrap resamples for the FD interval")
    p.add_argument("--latency-batch", type=int, default=d.latency_batch, help="images per timed call")
    p.add_argument("--latency-repeats", type=int, default=d.latency_repeats, help="timed calls (median)")
    p.add_argument("--baseline", default=None, help="model:steps (or model: its most steps) for paired differences "
                                                     "(default: the teacher, most steps)")
    p.add_argument("--skip-missing", action="store_true", help="skip models the family lacks (with a warning)")
    p.add_argument("--sample-prompts", type=int, default=d.sample_prompts, help="columns of samples.png")
    p.add_argument("--out", default=d.out)
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=d.dtype)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from rglcd.data.prompts import PromptSetError
    from rglcd.logs import quiet_libraries
    from rglcd.sampling import InputError

    quiet_libraries(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {k: v for k, v in vars(args).items() if k not in ("threads", "verbose")}
    command = "python -m rglcd.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        if min(args.batch_size, args.bootstrap, args.latency_batch, args.latency_repeats) < 1 or not args.seeds:
            raise InputError("--batch-size, --bootstrap, --latency-batch and --latency-repeats must be >= 1 and "
                             "--seeds non-empty")
        rows = run_evaluation(EvalConfig(**fields), command)
    except (InputError, PromptSetError, ModelLoadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 (one line; RGLCD_DEBUG=1 shows the traceback)
        if os.environ.get("RGLCD_DEBUG"):
            raise
        print(f"error: unexpected {type(err).__name__}: {err} (set RGLCD_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    print(markdown_table(rows))
    print(f"wrote {args.out}/results.csv, results.md, reward-vs-steps.png, quality-vs-latency.png, samples.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
