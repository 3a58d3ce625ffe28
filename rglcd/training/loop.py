"""The one training loop every trainer runs: progress bar, scalars, periodic evaluation and atomic checkpoints.

A trainer supplies `train_step(step) -> {name: float or 0-d tensor}` (one optimiser step, its randomness drawn from
`step_generator(seed, step)`; tensors are read back only at log steps, so a step needs no host-device sync) and
optionally `evaluate(step) -> {name: float}`; the loop does the rest and can be stopped (Ctrl-C) and resumed
(`resume="latest"`) without losing more than `checkpoint_every` steps. With several processes, the main one alone
shows progress and evaluates (the others wait), and the returned evaluation metrics are its alone.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from rglcd.training.checkpoints import StepCounter, resume_checkpoint, save_checkpoint


def run_training(
    accelerator: Accelerator,
    counter: StepCounter,
    output_dir: str | Path,
    max_steps: int,
    train_step: Callable[[int], dict[str, float | torch.Tensor]],
    evaluate: Callable[[int], dict[str, float]] | None = None,
    resume: str | Path | None = "latest",
    checkpoint_every: int = 500,
    eval_every: int = 500,
    checkpoint_limit: int = 3,
    log_every: int = 10,
    stop_at: int | None = None,
    settings: dict[str, Any] | None = None,
) -> dict[str, float]:
    """Run `train_step` from the resumed step to `max_steps`; returns the last scalars (training and evaluation).

    `stop_at` ends the run early (with a checkpoint) without changing the schedule, to split one long run into
    several sessions. `counter` must already be registered with `accelerator.register_for_checkpointing`.
    `settings` (`checkpoints.run_record`) are recorded in every checkpoint, and a resume must match them.
    """
    resume_checkpoint(accelerator, output_dir, resume, settings)
    last: dict[str, float | torch.Tensor] = {}
    start = counter.step
    bar = tqdm(total=max_steps, initial=start, disable=not accelerator.is_main_process, desc="train")
    t0 = time.time()
    try:
        for step in range(start, min(max_steps, stop_at or max_steps)):
            scalars = train_step(step)
            counter.step = step + 1
            bar.update(1)
            if (step + 1) % log_every == 0 or step + 1 == max_steps:
                scalars = as_floats(scalars)
                scalars["steps_per_s"] = (step + 1 - start) / max(time.time() - t0, 1e-9)
                accelerator.log(scalars, step=step + 1)
                bar.set_postfix({k: f"{v:.4g}" for k, v in scalars.items() if k != "steps_per_s"})
            last.update(scalars)
            if evaluate is not None and ((step + 1) % eval_every == 0 or step + 1 == max_steps):
                if accelerator.is_main_process:  # once, on unwrapped networks: no collective call to deadlock on
                    metrics = evaluate(step + 1)
                    accelerator.log(metrics, step=step + 1)
                    accelerator.print(f"step {step + 1}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
                    last.update(metrics)
                accelerator.wait_for_everyone()
            if (step + 1) % checkpoint_every == 0 or step + 1 in (max_steps, stop_at):
                save_checkpoint(accelerator, output_dir, step + 1, checkpoint_limit, settings)
    except KeyboardInterrupt:
        accelerator.print(f"interrupted at step {counter.step}; saving a checkpoint before exiting")
        save_checkpoint(accelerator, output_dir, counter.step, checkpoint_limit, settings)
        raise
    finally:
        bar.close()
    last = as_floats(last)
    last["wall_s"] = time.time() - t0
    return last


def as_floats(scalars: dict[str, float | torch.Tensor]) -> dict[str, float]:
    """Scalars as Python numbers (0-d tensors read back to the host)."""
    return {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in scalars.items()}
