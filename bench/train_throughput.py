"""Training throughput (optimiser steps per second) and peak memory of each distillation method.

    python bench/train_throughput.py --threads 1                                   # emoji-64, CPU, every method
    python bench/train_throughput.py --full-size sd21-768 --device cuda --dtype bf16 --batch-size 4
    python bench/train_throughput.py --full-size tiny                              # the same code on tiny shapes

Family mode runs `rglcd.training.distill.train_distill` for `--warmup + --steps` steps into a temporary folder
(no export, no evaluation) once per method, each in its own process so that its peak memory is its own (CPU:
peak resident set size; GPU: torch.cuda.max_memory_allocated). Methods: lcd, lcd-lora (rank 16), rg-lcd (the
family reward, beta 0.001), mlcm, and ict (`rglcd.training.ict.train_ict`: the teacher's architecture trained from
the family's data, no teacher; the sampler kind `cm` must be registered). Full-size mode times one LCD step (teacher CFG DDIM step, student forward and backward, AdamW, EMA
target) of random-weight SD2.1-shaped UNets with random latents and text states.
Writes bench/results/train-throughput-<family or shape>-<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import full_size
from report import write_report

METHODS: dict[str, dict[str, Any]] = {
    "lcd": {"method": "lcd"},
    "lcd-lora": {"method": "lcd", "lora_rank": 16, "learning_rate": 1e-3},
    "rg-lcd": {"method": "rg-lcd", "reward_scale": 0.001},
    "mlcm": {"method": "mlcm"},
    "ict": {"method": "ict"},
}


def step_stats(times: list[float], warmup: int) -> dict[str, float]:
    """Median step time after `warmup` steps, and steps per second from it."""
    timed = times[warmup:] or times
    median = statistics.median(timed)
    return {"steps_timed": len(timed), "median_step_s": round(median, 4), "steps_per_s": round(1 / median, 3)}


MIXED_PRECISION = {"fp32": "no", "bf16": "bf16", "fp16": "fp16"}


def distill_worker(method: str, family: str, batch_size: int, warmup: int, steps: int, device: str,
                   dtype: str) -> dict[str, Any]:
    """Train `method` for warmup + steps steps with per-step timing; one process per call (see peak_memory_mb)."""
    from rglcd.training import distill, ict

    trainer = ict if method == "ict" else distill
    times: list[float] = []
    memory: dict[str, float] = {}
    original = trainer.run_training

    def timed_run_training(accelerator, counter, output_dir, max_steps, train_step, evaluate=None, *rest, **kw):
        memory["before_training_mb"] = full_size.peak_memory_mb(device)

        def step(i: int) -> dict[str, float]:
            t0 = time.perf_counter()
            out = train_step(i)
            full_size.synchronize(device)
            times.append(time.perf_counter() - t0)
            return out

        return original(accelerator, counter, output_dir, max_steps, step, None, *rest, **kw)

    trainer.run_training = timed_run_training
    with tempfile.TemporaryDirectory() as tmp:
        common = dict(family=family, output_dir=tmp, export_dir=None, batch_size=batch_size, max_steps=warmup + steps,
                      checkpoint_every=10**9, eval_every=10**9, resume=None, mixed_precision=MIXED_PRECISION[dtype],
                      **METHODS[method])
        try:
            if method == "ict":
                ict.train_ict(ict.ICTConfig(**common))
            else:
                distill.train_distill(distill.DistillConfig(warmup_steps=1, **common))
        except ValueError as err:
            if "unknown method" not in str(err):
                raise
            return {"supported": False, "note": str(err)}
    return {"supported": True, "batch_size": batch_size, **step_stats(times, warmup),
            "peak_memory_mb": round(full_size.peak_memory_mb(device)), **{k: round(v) for k, v in memory.items()}}


def full_size_lcd(shape_name: str, batch_size: int, warmup: int, steps: int, device: str, dtype: torch.dtype,
                  gradient_checkpointing: bool) -> dict[str, Any]:
    """Step time and peak memory of LCD on random full-size UNets: frozen teacher in `dtype`, fp32 student and EMA
    target, autocast to `dtype`, AdamW."""
    from diffusers import DDPMScheduler

    from rglcd.objectives import LCDLoss
    from rglcd.training.distill import student_from_teacher

    shape = full_size.SHAPES[shape_name]
    with torch.device(device):
        teacher = full_size.build_unet(shape).requires_grad_(False)
        student = student_from_teacher(teacher, 256).train()
    teacher.to(dtype)
    target = copy.deepcopy(student).requires_grad_(False)
    if gradient_checkpointing:
        student.enable_gradient_checkpointing()
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-6)
    alphas = DDPMScheduler.from_config(full_size.scheduler_config(shape)).alphas_cumprod
    loss_fn = LCDLoss(alphas, w_min=2.0, w_max=8.0, prediction_type=shape.prediction_type)

    def call(unet: Any) -> Any:
        takes_w = unet.config.time_cond_proj_dim is not None
        return lambda z, t, c, w: unet(z.to(unet.dtype), t.to(device), encoder_hidden_states=c.to(unet.dtype),
                                       timestep_cond=w if takes_w else None).sample

    latent = shape.resolution // 8
    g = torch.Generator().manual_seed(0)
    times = []
    full_size.reset_peak_memory(device)
    for _ in range(warmup + steps):
        z0 = torch.randn(batch_size, 4, latent, latent, generator=g).to(device)
        ctx = full_size.text_states(shape, batch_size, device, torch.float32, seed=len(times))
        full_size.synchronize(device)
        t0 = time.perf_counter()
        with torch.autocast(device_type=device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
            loss, _ = loss_fn(call(student), call(teacher), call(target), z0, ctx, torch.zeros_like(ctx),
                              torch.randn_like(z0), loss_fn.draw(batch_size, g))
        loss.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for p_t, p in zip(target.parameters(), student.parameters()):
                p_t.lerp_(p, 0.05)
        full_size.synchronize(device)
        times.append(time.perf_counter() - t0)
    return {"lcd": {"supported": True, "batch_size": batch_size, "gradient_checkpointing": gradient_checkpointing,
                    "unet_params_m": round(sum(p.numel() for p in student.parameters()) / 1e6, 1),
                    **step_stats(times, warmup), "peak_memory_mb": round(full_size.peak_memory_mb(device))}}


def run_methods_in_subprocesses(args: argparse.Namespace) -> dict[str, Any]:
    """One fresh process per method (peak memory is per process)."""
    results = {}
    for method in args.methods:
        with tempfile.NamedTemporaryFile(suffix=".json") as tmp:
            cmd = [sys.executable, __file__, "--worker", method, "--worker-out", tmp.name, "--family", args.family,
                   "--batch-size", str(args.batch_size), "--warmup", str(args.warmup), "--steps", str(args.steps),
                   "--device", args.device, "--dtype", args.dtype]
            cmd += ["--threads", str(args.threads)] if args.threads else []
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
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--batch-size", type=int, default=None, help="default 32 (family), 4 (full size)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(full_size.DTYPES), default="fp32")
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
        result = distill_worker(args.worker, args.family, args.batch_size, args.warmup, args.steps, args.device,
                                args.dtype)
        Path(args.worker_out).write_text(json.dumps(result))
        return
    if args.full_size:
        methods = full_size_lcd(args.full_size, args.batch_size, args.warmup, args.steps, args.device,
                                full_size.DTYPES[args.dtype], args.gradient_checkpointing)
    else:
        methods = run_methods_in_subprocesses(args)
    write_report("train-throughput", args, warmup=args.warmup, steps=args.steps, methods=methods)

if __name__ == "__main__":
    main()
