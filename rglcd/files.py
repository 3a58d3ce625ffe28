"""Writing files so that a reader never sees half of one: every write goes to a temporary file in the same folder,
which then replaces the target in one `os.replace` (atomic on one file system). Several processes of a run may write
the same file (a family file, a cache entry): each writes its own temporary file, the last replace wins whole.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.json"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside `path` (its folder created) to write to: when the block ends without an error, the
    temporary file replaces `path`; otherwise it is removed and `path` is left as it was.

        with atomic_path(cache / "latents.pt") as tmp:
            torch.save(data, tmp)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to `path` atomically; returns `path`."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data, encoding="utf-8")
    return path


def write_json(path: str | Path, value: Any, **dumps: Any) -> Path:
    """`value` as JSON (indent 2, a final newline; `dumps` passes more `json.dumps` options) written atomically."""
    return write_atomic(path, json.dumps(value, indent=2, **dumps) + "\n")


def write_metrics(folder: str | Path, metrics: dict[str, Any]) -> Path:
    """A run's or an export's `metrics.json` in `folder`, the one format every trainer writes."""
    return write_json(Path(folder) / METRICS_FILE, metrics)
