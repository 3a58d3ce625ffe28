"""Resumable training state shared by every trainer: atomic accelerate checkpoints and step-seeded randomness.

A checkpoint is an `accelerator.save_state` folder (models, optimizers, LR schedulers, RNG states, and every object
registered with `accelerator.register_for_checkpointing`) written under a temporary name, flushed to disk (fsync)
and renamed when complete, so an interrupted save or a power loss never leaves a half-written `checkpoint-*` behind.
Resuming reads every file weights-only (tensors and plain values, no arbitrary pickled objects), including the
registered objects' states, which accelerate itself would unpickle in full.

Batches, noise and timesteps are drawn from a generator seeded by (seed, step): a resumed run draws exactly what
the uninterrupted run would have drawn, so its loss curve continues the same.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import Accelerator

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")


class StepCounter:
    """The global optimisation step, saved and restored with the checkpoint."""

    def __init__(self) -> None:
        self.step = 0

    def state_dict(self) -> dict:
        return {"step": self.step}

    def load_state_dict(self, state: dict) -> None:
        self.step = int(state["step"])


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """A CPU generator that depends only on (seed, step, rank)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step) * 1_009 + rank)


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints under `output_dir`, oldest step first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := CHECKPOINT_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int | None = 3) -> Path:
    """Write `output_dir/checkpoint-{step}` atomically and keep only the newest `total_limit` checkpoints."""
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        fsync_tree(tmp)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        fsync_tree(root, files=False)
        if total_limit:
            for old in list_checkpoints(root)[:-total_limit]:
                shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def fsync_tree(folder: Path, files: bool = True) -> None:
    """Flush `folder` to disk: every file under it (with `files`), then each folder's entries, then `folder`'s."""
    paths = sorted(folder.rglob("*"), reverse=True) if files else []
    for path in [*paths, folder]:
        if path.is_file() or path.is_dir():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


@contextmanager
def weights_only_custom_states() -> Iterator[None]:
    """While active, accelerate's `load_state` reads registered objects' states (`custom_checkpoint_*.pkl`) with
    `torch.load(weights_only=True)` instead of its own `weights_only=False` (a full unpickle that can run code)."""
    import accelerate.accelerator as accelerator_module

    original = accelerator_module.load_custom_state

    def load_custom_state(obj: object, path: str, index: int = 0) -> None:
        state = torch.load(Path(path) / f"custom_checkpoint_{index}.pkl", map_location="cpu", weights_only=True)
        obj.load_state_dict(state)

    accelerator_module.load_custom_state = load_custom_state
    try:
        yield
    finally:
        accelerator_module.load_custom_state = original


def check_resume(resume: str | None) -> None:
    """FileNotFoundError (before a run writes anything) when `resume` names a checkpoint folder that is not there
    (None and 'latest' always pass: 'latest' with nothing saved starts afresh)."""
    if resume and resume != "latest" and not Path(resume).is_dir():
        raise FileNotFoundError(f"checkpoint folder not found: {resume}")


def resume_checkpoint(accelerator: Accelerator, output_dir: str | Path, resume: str | None) -> Path | None:
    """Load `resume` ('latest' or a checkpoint folder) into the accelerator's registered state.

    Returns the folder loaded, or None when `resume` is None or 'latest' finds nothing (a fresh start).
    """
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            accelerator.print(f"no checkpoint under {output_dir}; starting from scratch")
            return None
        path = found[-1]
    else:
        check_resume(resume)
        path = Path(resume)
    try:
        with weights_only_custom_states():
            accelerator.load_state(str(path))
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} holds more than tensors and plain values; not loaded (weights-only): "
                         f"{str(err).splitlines()[0]}") from err
    accelerator.print(f"resumed from {path}")
    return path
