"""Training throughput (optimiser steps per second) and peak memory of each distillation method.

    python bench/train_throughput.py --threads 1                                   # emoji-64, CPU, every method
    python bench/train_throughput.py --full-size sd21-768 --device cuda --dtype bf16 --batch-size 4
    python bench/train_throughput.py --full-size tiny                              # the same code on tiny shapes

Each method runs in its own process so that its peak memory is its own (CPU: peak resident set size; GPU:
torch.cuda.max_memory_allocated). lcd, lcd-lora (rank 16), rg-lcd (reward beta 0.001) and mlcm (4 segments) time
`rglcd.training.distill.distill_step`, the trainer's step, on networks built by the trainer's functions
(`train_vs_reference.OurStep`) with random latents and text states: a family's teacher (rg-lcd: the family's reward
through its VAE) or random-weight SD2.1-shaped models (rg-lcd: a random CLIP ViT-H-14-shaped HPS-style reward).
ict times `rglcd.training.ict.ict_step` (the teacher's architecture trained from the family's data, no teacher) on
the trainer's network, optimiser, EMA and batches.
Writes bench/results/train-throughput-<family or shape>-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import full_size
import train_vs_reference as tvr
from report import write_report

from rglcd.methods import METHODS as REGISTRY
from rglcd.methods import ObjectiveParts, Trainer, get_method
from rglcd.objectives import RewardGuidance
from rglcd.training.distill_config import DistillConfig

LORA = "lcd-lora"  # the LCD method with --lora-rank (LoRA is a flag, not a method)
METHODS = ("lcd", LORA, *(m for m in REGISTRY if m != "lcd"))
DISTILL_METHODS = tuple(m for m in METHODS if m == LORA or get_method(m).trainer is Trainer.DISTILL)
PROMPT = "red apple"


def step_stats(times: list[float], warmup: int) -> dict[str, float]:
    """Median step time after `warmup` steps, and steps per second from it."""
    timed = times[warmup:] or times
    median = statistics.median(timed)
    return {"steps_timed": len(timed), "median_step_s": round(median, 4), "steps_per_s": round(1 / median, 3)}


def time_steps(step: Callable[[int], Any], warmup: int, steps: int, device: str, exclude: int = 0) -> dict[str, Any]:
    """`step(i)` for warmup + steps calls: median of the timed ones, each call's time, and the peak memory over the
    timed calls (CUDA: max_memory_allocated less `exclude` bytes; CPU: the process's peak RSS)."""
    times = []
    for i in range(warmup + steps):
        if i == warmup:
            full_size.reset_peak_memory(device)
        full_size.synchronize(device)
        t0 = time.perf_counter()
        step(i)
        full_size.synchronize(device)
        times.append(time.perf_counter() - t0)
    peak = full_size.peak_memory_mb(device) - (exclude / 2**20 if device.startswith("cuda") else 0)
    return {**step_stats(times, warmup), "step_s": [round(t, 4) for t in times], "peak_memory_mb": round(peak)}


def our_step(setup: tvr.Setup, method: str, accelerator: Any, reward: Callable[[], tuple[Any, Any]] | None = None,
             **options: Any) -> tvr.OurStep:
    """Our step for a distillation method (or lcd-lora) on `setup`'s teacher, its objective built by the registry
    (MLCM: 4 segments); a method with a reward scores with `reward() -> (reward model, VAE)` at beta 0.001."""
    lora = method == LORA
    registered = get_method("lcd" if lora else method)
    cfg = DistillConfig.of(method=registered.name, segments=4, reward_scale=1e-3)
    base = setup.loss()
    common = {f: getattr(base, f) for f in ("alphas_cumprod", "num_ddim_timesteps", "w_min", "w_max",
                                            "w_embedding_dim", "loss_type", "huber_c", "prediction_type")}
    expert = RewardGuidance(*reward()) if registered.uses_reward(False) else None
    objective = registered.build(registered.settings_of(cfg), ObjectiveParts(common, cfg.optim.max_steps, expert))
    with torch.device(accelerator.device):
        return tvr.OurStep(setup, tvr.LORA_RANK if lora else 0, accelerator, objective=objective, **options)


def step_function(side: tvr.OurStep, setup: tvr.Setup, batch: int, device: str) -> Callable[[int], None]:
    loss_fn = setup.loss()

    def step(i: int) -> None:
        micro = tvr.step_inputs(setup, loss_fn, batch, i, device)
        micro.texts = [PROMPT] * batch
        side(micro)

    return step


def family_reward(family_name: str, device: str) -> Callable[[], tuple[Any, Any]]:
    def build() -> tuple[Any, Any]:
        from rglcd.models import load_family

        family = load_family(family_name)
        return family.reward().to(device), family.vae.to(device)

    return build


def ict_worker(family: str, batch_size: int, warmup: int, steps: int, device: str, dtype: str) -> dict[str, Any]:
    """`rglcd.training.ict.ict_step` on the family's data (through the trainer's `TrainStep`: its draw, batch and
    noise) for warmup + steps steps, on a network, optimiser and EMA built by the trainer's functions."""
    from rglcd.models import load_family
    from rglcd.training import ict

    cfg = ict.ICTConfig(family=family, batch_size=batch_size, max_steps=warmup + steps)
    accelerator = tvr.make_accelerator(device, dtype)
    loaded = load_family(family)
    batches = ict.ict_data(cfg, loaded, accelerator)
    unet = ict.ict_unet(cfg, loaded, batches)
    parts = ict.ict_parts(cfg, ict.ict_loss(cfg), unet, accelerator)
    draw = ict.BatchDraw(batches, batch_size, accelerator.device, loaded, unet, cfg.cfg_dropout)
    step = ict.TrainStep(parts, draw, cfg.seed)
    return {"supported": True, "batch_size": batch_size, **time_steps(step, warmup, steps, device)}


def method_worker(method: str, what: str, batch_size: int, warmup: int, steps: int, device: str, dtype: str,
                  gradient_checkpointing: bool = False) -> dict[str, Any]:
    """One method's figures (run it in a fresh process: CPU peak memory is per process)."""
    if method == "ict":
        return ict_worker(what, batch_size, warmup, steps, device, dtype)
    accelerator = tvr.make_accelerator(device, dtype)
    setup = tvr.build_setup(what, device)
    if what in full_size.SHAPES:
        import full_size_suite

        reward = lambda: full_size_suite.clip_reward_and_vae(what, device, full_size.DTYPES[dtype])  # noqa: E731
    else:
        reward = family_reward(what, device)
    side = our_step(setup, method, accelerator, reward, gradient_checkpointing=gradient_checkpointing)
    exclude = sum(p.numel() * p.element_size() for p in setup.teacher.parameters())
    return {"supported": True, "batch_size": batch_size, "gradient_checkpointing": gradient_checkpointing,
            **time_steps(step_function(side, setup, batch_size, device), warmup, steps, device, exclude)}


def run_methods_in_subprocesses(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process per method (peak memory is per process)."""
    results = {}
    for method in args.methods:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [sys.executable, __file__, "--worker", method, "--worker-out", tmp.name, "--family", args.family,
                   "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
                   "--device", args.device, "--dtype", args.dtype]
            cmd += ["--threads", str(args.threads)] if args.threads else []
            cmd += ["--full-size", args.full_size] if args.full_size else []
            cmd += ["--gradient-checkpointing"] if args.gradient_checkpointing else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
                results[method] = {"supported": None, "error": tail[0]}
            else:
                results[method] = json.loads(Path(tmp.name).read_text())
        print(method, results[method], flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="emoji-64")
    parser.add_argument("--full-size", choices=sorted(full_size.SHAPES), default=None)
    parser.add_argument("--methods", nargs="+", default=None, choices=list(METHODS),
                        help="default: all (full size: lcd, the LCD step of the previous version of this benchmark)")
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (family), 4 (full size)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(tvr.MIXED_PRECISION), default="fp32")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/train-throughput-*.json)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch_size = args.batch_size or (4 if args.full_size else 32)
    if args.worker:
        result = method_worker(args.worker, args.full_size or args.family, args.batch_size, args.warmup, args.steps,
                               args.device, args.dtype, args.gradient_checkpointing)
        Path(args.worker_out).write_text(json.dumps(result))
        return
    args.methods = args.methods or (["lcd"] if args.full_size else list(METHODS))
    if args.full_size and "ict" in args.methods:
        parser.error("ict trains from a family's data: not with --full-size")
    methods = run_methods_in_subprocesses(args)
    write_report("train-throughput", args, warmup=args.warmup, steps=args.steps, methods=methods)


if __name__ == "__main__":
    main()
