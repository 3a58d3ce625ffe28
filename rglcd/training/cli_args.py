"""Command-line flags from a trainer's config dataclass: every field becomes `--field-name`, plus `--threads`."""

from __future__ import annotations

import argparse
import dataclasses
import typing
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def _parser_type(hint: Any) -> tuple[Any, dict]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return args[0], {"nargs": "+"}
    if args and origin is not tuple and len(args) == 1:
        return _parser_type(args[0])
    if hint is bool:
        return lambda s: s.lower() in ("1", "true", "yes"), {}
    return hint, {}


def parse_config(cls: type[T], description: str | None = None, argv: list[str] | None = None) -> T:
    """Parse argv into `cls` (a dataclass); `--threads N` sets torch's CPU threads (0 keeps torch's default)."""
    parser = argparse.ArgumentParser(description=description)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind, extra = _parser_type(hints[f.name])
        parser.add_argument("--" + f.name.replace("_", "-"), type=kind, default=f.default, **extra,
                            help=f"default: {f.default}")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ns = vars(parser.parse_args(argv))
    threads = ns.pop("threads")
    if threads > 0:
        torch.set_num_threads(threads)
    for key, value in ns.items():
        if isinstance(value, str) and value.lower() == "none":
            ns[key] = None
        elif isinstance(value, list):
            ns[key] = tuple(value)
    return cls(**ns)
