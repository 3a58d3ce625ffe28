"""Experiment tracking for the trainers: one Accelerator factory with the chosen trackers, and validation grids.

`report_to` is "tensorboard" (default; event files under the run's output folder), "wandb" (needs `pip install
wandb`, online or `WANDB_MODE=offline`), "all" (every tracker accelerate finds installed) or "none".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from accelerate import Accelerator, PartialState
from accelerate.utils import get_torch_accelerator_backend

REPORT_TO = ("tensorboard", "wandb", "all", "none")


def launched_processes() -> int:
    """How many processes the launcher started (torchrun and `accelerate launch` set WORLD_SIZE; 1 without)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def require_one_process(trainer: str) -> None:
    """ValueError (one line) when launched as several processes: `trainer` is a minutes-long stage of the embedded
    family that trains in one process, and N copies would only race on the same export."""
    if launched_processes() > 1:
        raise ValueError(f"{trainer} trains in one process: run it with python, not as {launched_processes()} "
                         "processes (torchrun / accelerate launch)")


def process_state() -> PartialState:
    """This process's rank and the process count before an Accelerator exists (accelerate's shared state, which the
    trainer's Accelerator then joins): several processes without an accelerator join on the CPU (gloo), as
    `make_accelerator` asks."""
    cpu = launched_processes() > 1 and get_torch_accelerator_backend()[0] is None
    return PartialState(cpu=True) if cpu else PartialState()


def make_accelerator(report_to: str | None, output_dir: str, **kwargs: Any) -> Accelerator:
    """An Accelerator logging to `report_to` (None: as "none", which the command line reads as None) with its project
    folder at `output_dir`; clear errors for a bad or uninstalled tracker.

    Launched as several processes (torchrun, `accelerate launch`: WORLD_SIZE > 1) on a machine without an
    accelerator, it joins them on the CPU (gloo): accelerate does so only when asked (`cpu=True`), and otherwise
    runs each process alone as the main one, every process training unsynchronised and writing the same files."""
    world = launched_processes()
    if world > 1 and get_torch_accelerator_backend()[0] is None:
        kwargs.setdefault("cpu", True)
    report_to = report_to or "none"
    if report_to not in REPORT_TO:
        raise ValueError(f"unknown --report-to {report_to!r}: use one of {', '.join(REPORT_TO)}")
    if report_to == "wandb":
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise ValueError("--report-to wandb needs the wandb package (pip install wandb)") from None
    log_with = None if report_to == "none" else report_to
    accelerator = Accelerator(log_with=log_with, project_dir=output_dir, **kwargs)
    if accelerator.num_processes != world:
        raise ValueError(f"launched as {world} processes, but accelerate joined {accelerator.num_processes} "
                         f"({accelerator.distributed_type.value}): check the launcher's device settings")
    return accelerator


def log_grids(accelerator: Accelerator, pngs: list[Path], step: int) -> None:
    """Validation grids (PNG files named `<stem>-<set>.png`) as images `samples/<set>` to every tracker that
    takes images (tensorboard: NHWC arrays; wandb: one image each)."""
    import numpy as np
    from PIL import Image

    images = {f"samples/{p.stem.rsplit('-', 1)[-1]}": np.asarray(Image.open(p).convert("RGB"))[None] for p in pngs}
    for tracker in accelerator.trackers:
        if images and hasattr(tracker, "log_images"):
            kwargs = {"dataformats": "NHWC"} if tracker.name == "tensorboard" else {}
            tracker.log_images(images, step, **kwargs)
