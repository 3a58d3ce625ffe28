"""Resumable training state shared by every trainer: atomic accelerate checkpoints and step-seeded randomness.

A checkpoint is an `accelerator.save_state` folder (models, optimizers, LR schedulers, RNG states, and every object
registered with `accelerator.register_for_checkpointing`) written under a temporary name, flushed to disk (fsync)
and renamed when complete, so an interrupted save or a power loss never leaves a half-written `checkpoint-*` behind.
Resuming reads every file weights-only (tensors and plain values, no arbitrary pickled objects), including the
registered objects' states, which accelerate itself would unpickle in full.

Beside accelerate's files, the main process writes `run_settings.json` (inside the temporary folder, so it is renamed
with them): the run's settings and process count, and each file's size. A resume with other settings stops with one
line naming them, unless they are ones that may change (`rglcd.training.settings.MAY_CHANGE_ON_RESUME`). A checkpoint
whose files are missing, of another size than written, or truncated (a safetensors header or a torch zip archive
that does not read) is corrupt: `--resume latest` falls back to the newest intact one with a warning, a named folder
is refused.

Batches, noise and timesteps are drawn from a generator seeded by (seed, step): a resumed run draws exactly what
the uninterrupted run would have drawn, so its loss curve continues the same.
"""

from __future__ import annotations

import json
import os
import pickle
import re
import shutil
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, PartialState
from safetensors import SafetensorError

from rglcd.training.settings import MAY_CHANGE_ON_RESUME, flat_values

CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
RECORD = "run_settings.json"
WAYS_ON = "start afresh with --resume none, or give another --output-dir"


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


def run_record(cfg: Any, accelerator: Accelerator | PartialState) -> dict[str, Any]:
    """What a checkpoint records of its run: every setting of `cfg` (a settings dataclass) as JSON values, and the
    process count (the global batch is the per-process batch times it)."""
    return json.loads(json.dumps({**flat_values(cfg), "processes": accelerator.num_processes}))


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, step: int, total_limit: int | None = 3,
                    record: dict[str, Any] | None = None) -> Path:
    """Write `output_dir/checkpoint-{step}` atomically (with `record`, `run_record`'s settings, and the files'
    sizes) and keep only the newest `total_limit` checkpoints."""
    root = Path(output_dir)
    final = root / f"checkpoint-{step}"
    tmp = root / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_record(tmp, record)
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


def write_record(folder: Path, settings: dict[str, Any] | None) -> None:
    """`folder/run_settings.json`: the run's settings (None: not known) and the size of every file written so far."""
    files = {p.relative_to(folder).as_posix(): p.stat().st_size for p in sorted(folder.rglob("*")) if p.is_file()}
    (folder / RECORD).write_text(json.dumps({"settings": settings, "files": files}, indent=1))


def read_record(folder: Path) -> dict[str, Any] | None:
    """A checkpoint's record, or None when it has none (made before records were written); ValueError when it is
    there but unreadable."""
    path = folder / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{RECORD} does not read ({type(err).__name__})") from None
    if (not isinstance(record, dict) or not isinstance(record.get("files"), dict)
            or not isinstance(record.get("settings"), dict | None)):
        raise ValueError(f"{RECORD} is not a checkpoint record")
    return record


def file_problem(path: Path) -> str | None:
    """Why a checkpoint file does not read (a safetensors file shorter than its header says, a torch zip archive
    without its closing directory, as truncation leaves them), or None. Reads headers only, not the tensors."""
    name = path.name
    with open(path, "rb") as fh:
        head = fh.read(8)
        if path.suffix == ".safetensors":
            if len(head) < 8:
                return f"{name} is truncated"
            header_len = struct.unpack("<Q", head)[0]
            raw = fh.read(header_len)
            if len(raw) < header_len:
                return f"{name} is truncated"
            try:
                header = json.loads(raw)
                end = max((v["data_offsets"][1] for k, v in header.items() if k != "__metadata__"), default=0)
            except (ValueError, KeyError, TypeError, IndexError):
                return f"{name} has no readable safetensors header"
            if path.stat().st_size < 8 + header_len + end:
                return f"{name} is truncated"
        elif head.startswith(b"PK"):  # torch.save's zip archive (optimizer, scheduler, RNG and registered states)
            try:
                zipfile.ZipFile(fh).close()
            except zipfile.BadZipFile:
                return f"{name} is truncated"
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why checkpoint `folder` cannot be resumed (empty, a recorded file missing or of another size, a file that
    does not read), or None when it is intact."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != RECORD)
    if not files:
        return "empty"
    try:
        record = read_record(folder)
    except ValueError as err:
        return str(err)
    for name, size in (record or {}).get("files", {}).items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size < size:
            return f"{name} is truncated: {path.stat().st_size} of its {size} bytes"
        if path.stat().st_size != size:
            return f"{name} has {path.stat().st_size} bytes, {size} were written"
    for path in files:
        problem = file_problem(path)
        if problem:
            return problem
    return None


def settings_differences(recorded: dict[str, Any], current: dict[str, Any]) -> tuple[list[str], list[str]]:
    """('--setting: checkpoint value -> this run's value' for settings that must match, the same for those that
    may change on a resume). A setting one side lacks (another version's) counts as different."""
    fixed, free = [], []
    for name in sorted(set(recorded) | set(current)):
        old, new = recorded.get(name, "(not recorded)"), current.get(name, "(not set)")
        if old != new:
            label = name if name == "processes" else f"--{name.replace('_', '-')}"  # the one record not a flag
            line = f"{label}: {old} -> {new}"
            (free if name in MAY_CHANGE_ON_RESUME else fixed).append(line)
    return fixed, free


def choose_checkpoint(output_dir: str | Path, resume: str | None, settings: dict[str, Any] | None = None,
                      say: Callable[..., None] = print) -> Path | None:
    """The checkpoint `resume` means ('latest': the newest intact one under `output_dir`; else that folder), checked
    against this run's `settings` (`run_record`; None: not checked); None for a fresh start. Reads no tensors.

    ValueError (one line) when a named folder is corrupt, when every checkpoint under `output_dir` is, or when the
    settings differ in one that must match; `say` (the main process's print) tells of skipped corrupt checkpoints,
    checkpoints without a record and changed settings that may change."""
    if not resume:
        return None
    if resume == "latest":
        found = list_checkpoints(output_dir)
        if not found:
            say(f"no checkpoint under {output_dir}; starting from scratch")
            return None
        skipped = []
        for path in reversed(found):
            problem = checkpoint_problem(path)
            if problem is None:
                break
            skipped.append(f"{path.name} ({problem})")
        else:
            raise ValueError(f"no intact checkpoint under {output_dir}: {', '.join(skipped)}; {WAYS_ON}")
        if skipped:
            say(f"warning: corrupt checkpoint {', '.join(skipped)} skipped; resuming from the newest intact one, "
                f"{path}", file=sys.stderr)
    else:
        path = Path(resume)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint folder not found: {path}")
        problem = checkpoint_problem(path)
        if problem:
            raise ValueError(f"checkpoint {path} is corrupt ({problem}): give an intact one (--resume latest takes "
                             f"the newest intact one), or {WAYS_ON}")
    recorded = (read_record(path) or {}).get("settings")
    if settings is not None and recorded is None:
        say(f"warning: checkpoint {path} records no settings (made before they were recorded); resuming without "
            "checking that they match", file=sys.stderr)
    elif settings is not None:
        fixed, free = settings_differences(recorded, settings)
        if fixed:
            raise ValueError(f"checkpoint {path} was made with other settings ({'; '.join(fixed)}): resume it with "
                             f"its settings, or {WAYS_ON}")
        if free:
            say(f"resuming {path} with changed settings that may change on a resume: {'; '.join(free)}")
    return path


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


def resume_checkpoint(accelerator: Accelerator, output_dir: str | Path, resume: str | Path | None,
                      settings: dict[str, Any] | None = None) -> Path | None:
    """Load `resume` into the accelerator's registered state, weights-only: 'latest' or a checkpoint folder's name
    (chosen and checked here by `choose_checkpoint`), or a Path that `choose_checkpoint` already returned (a trainer
    checks before it writes anything).

    Returns the folder loaded, or None when `resume` is None or 'latest' finds nothing (a fresh start).
    """
    path = resume if isinstance(resume, Path) else choose_checkpoint(output_dir, resume, settings, accelerator.print)
    if path is None:
        return None
    try:
        with weights_only_custom_states():
            accelerator.load_state(str(path))
    except pickle.UnpicklingError as err:
        raise ValueError(f"checkpoint {path} holds more than tensors and plain values; not loaded (weights-only): "
                         f"{str(err).splitlines()[0]}") from err
    except (SafetensorError, RuntimeError, EOFError, KeyError, zipfile.BadZipFile) as err:  # damage the header checks cannot see
        raise ValueError(f"checkpoint {path} does not load ({type(err).__name__}: {str(err).splitlines()[0]}); "
                         f"{WAYS_ON}") from err
    accelerator.print(f"resumed from {path}")
    return path
