"""Checks on what a user gives: one module for the CLI (`python -m rglcd`), the app and its API (`rglcd.demo`) and
the trainers' command lines (`rglcd.training.cli_args`). Each bad value raises `InputError` with one line naming
the field and what is allowed (a huge value is shown shortened, never echoed in full).

Ranges follow what the samplers accept: students (LCMScheduler, MLCMScheduler, CMScheduler) sample on the 50-point
skipping-step grid (`original_inference_steps`), so 1..50 steps; the teacher's DDIM takes at most
num_train_timesteps - steps_offset steps (999 on the SD schedule: 1000 'leading' steps index past the schedule);
seeds 0..2**32-1; prompts non-empty text, at most `MAX_PROMPT_CHARS` characters and the family's token limit.
"""

from __future__ import annotations

import argparse
import errno
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

from rglcd.samplers import SAMPLERS
from rglcd.models import Family, count_tokens
from rglcd.scheduling_mlcm import TLCM_STEPS

STUDENT_MAX_STEPS = 50  # LCMScheduler / MLCMScheduler: original_inference_steps of the skipping-step grid
MAX_SEED = 2**32 - 1
GUIDANCE = (1.0, 20.0)  # pipeline guidance scale (LCM students: w + 1); 1 = no guidance
MAX_IMAGES = 64  # per CLI call (written as one grid); the app allows fewer (rglcd.demo.NUM_IMAGES)
MAX_PROMPT_CHARS = 500  # before tokenizing: the token limit is checked once the family's tokenizer is loaded
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


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


def shown(value: Any, limit: int = 24) -> str:
    """`repr(value)` cut to about `limit` characters (a 400-digit seed is not echoed back)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**limit:
        return f"a {len(str(abs(value)))}-digit number"
    text = repr(value) if len(str(value)) <= 4 * limit else repr(str(value)[: 4 * limit])
    return text if len(text) <= limit else text[: limit - 3] + "..."


def number(value: Any, name: str, bounds: tuple[float, float], whole: bool) -> int | float:
    """`value` (a number or its text, not a bool) as an int (`whole`) or float within `bounds`, else InputError
    naming `name` and the range."""
    lo, hi = (f"{b:.0f}" if whole else f"{b:g}" for b in bounds)
    what = "a whole number" if whole else "a number"
    bad = InputError(f"{name} must be {what} between {lo} and {hi}, got {shown(value)}")
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 40:
            raise bad
        try:
            value = int(text) if whole and text.lstrip("+-").isdigit() else float(text)
        except ValueError:
            raise bad from None
    if isinstance(value, float):
        if not math.isfinite(value) or (whole and value != int(value)):
            raise bad
        value = int(value) if whole else value
    if not bounds[0] <= value <= bounds[1]:
        raise bad
    return int(value) if whole else float(value)


def prompt_text(value: Any) -> str:
    """The prompt stripped: text, not empty, at most MAX_PROMPT_CHARS characters."""
    if not isinstance(value, str):
        raise InputError(f"the prompt must be text, got {type(value).__name__}")
    text = value.strip()
    if not text:
        raise InputError("the prompt is empty: describe the image, e.g. 'green apple'")
    if len(text) > MAX_PROMPT_CHARS:
        raise InputError(f"the prompt is too long: {len(text)} characters, at most {MAX_PROMPT_CHARS}")
    return text


def step_limit(kind: str, scheduler_config: dict[str, Any]) -> int:
    """Most sampling steps a member of `kind` takes (students: 50, MLCM's TLCM sampler 8; teacher:
    num_train_timesteps - steps_offset). `scheduler_config` includes the member's own sampler settings."""
    if kind == "mlcm" and scheduler_config.get("sampler") == "tlcm":
        return max(TLCM_STEPS)
    if kind in SAMPLERS:
        return STUDENT_MAX_STEPS
    return int(scheduler_config.get("num_train_timesteps", 1000)) - int(scheduler_config.get("steps_offset", 0))


def check_prompt_tokens(family: Family, prompt: str) -> None:
    """InputError when `prompt` is longer than the family's text encoder reads (loads its tokenizer)."""
    tokenizer = family.tokenizer
    n, limit = count_tokens(tokenizer, prompt), tokenizer.model_max_length
    if n > limit:
        raise InputError(f"the prompt is too long: {n} tokens, the {family.name} text encoder reads at most {limit}")


def check_request(family: Family, member: str, req: Request, max_images: int = MAX_IMAGES) -> None:
    """InputError when `req` is out of range for this member of the family (kind-dependent steps, guidance, images,
    seed, prompt tokens). An empty prompt is allowed here (unconditional samples); front ends refuse it."""
    entry = family.member(member)
    kind = str(entry.get("kind", member))
    limit = step_limit(kind, {**family.scheduler_config, **entry.get("scheduler", {})})
    number(req.steps, f"steps ({kind})", (1, limit), whole=True)
    number(req.guidance_scale, "guidance scale", GUIDANCE, whole=False)
    number(req.num_images, "number of images", (1, max_images), whole=True)
    number(req.seed, "seed", (0, MAX_SEED), whole=True)
    check_prompt_tokens(family, req.prompt)


def output_image_path(value: str) -> Path:
    """A path an image can be written to, checked before any work: an image suffix, not a folder or a special file,
    a file can be made in its nearest existing parent folder (missing folders are created when writing)."""
    path = Path(value).expanduser()
    if path.is_dir() or value.endswith(("/", os.sep)):
        raise InputError(f"--out {shown(value, 60)} is a folder: give a file name such as outputs/banana.png")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise InputError(f"--out {shown(value, 60)} needs an image extension ({', '.join(IMAGE_SUFFIXES)})")
    if path.exists() and not path.is_file():
        raise InputError(f"--out {shown(value, 60)} is not a regular file: give a new file name")
    parent = path.resolve().parent
    while not parent.exists():
        parent = parent.parent
    try:  # a file made and dropped there: what permissions alone cannot say (/proc, /sys, read-only mounts)
        if not parent.is_dir() or not os.access(parent, os.W_OK):
            raise PermissionError(errno.EACCES, "not a writable folder")
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as exc:
        raise InputError(f"--out {shown(value, 60)}: cannot write under {parent} ({exc.strerror})") from None
    return path


def exit_usage(message: str) -> NoReturn:
    """Print `error: message` on stderr and exit with status 2 (a command line that cannot run)."""
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors (unknown flag, missing or malformed value) are one `error:` line on
    stderr and exit status 2, instead of the whole usage text."""

    def error(self, message: str) -> NoReturn:
        exit_usage(f"{message} (see {self.prog} --help)")
