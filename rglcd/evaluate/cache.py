"""The evaluator's cache: generated images, latencies and scores are saved per (model, steps, seed) under a key
that changes when the member's weights, the prompts or the settings do, so a rerun skips what is done."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from rglcd.files import atomic_path
from rglcd.models import resolve_source

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
    model cards and metrics files do not), and the family's text conditioning when it is not the default."""
    entry = family.member(model)
    files = []
    for key in ("unet", "lora"):
        if key in entry:
            src = resolve_source(entry[key], family.root)
            if src.is_local:
                folder = Path(src.location, src.subfolder or "")
                files += [(p.name, file_identity(p)) for p in sorted(folder.glob("*"))
                          if p.suffix in WEIGHT_SUFFIXES or p.name == "config.json"]
    conditioning = [] if family.text_conditioning == "tokens" else [family.text_conditioning]
    return json.dumps([entry, files] + conditioning, sort_keys=True, default=str)


def digest(*parts: Any) -> str:
    """A short stable hash of JSON-serialisable parts, for cache file names."""
    return hashlib.sha1(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


def cached(path: Path, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """`torch.load(path)` if it exists, else `compute()` saved there atomically."""
    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    with atomic_path(path) as tmp:
        torch.save(value, tmp)
    return value
