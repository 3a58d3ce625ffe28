"""Trainer configs as dataclasses whose fields say what they mean, grouped in sections.

`setting(default, help, low=, high=, choices=)` is a dataclass field with its meaning and its allowed values in the
metadata (the CLI's `--help` shows the meaning; `check_values` checks a value's type and range before a run). A
config may hold sections: fields whose type is itself a dataclass of settings (e.g. `DistillConfig.mlcm`). Setting
names are unique across a config and its sections, so the command line and the YAML recipes stay flat
(`--segments 4`, `segments: 4`); `build_config` puts each value in its section.

A checkpoint records a run's settings (`rglcd.training.checkpoints`); a resume must repeat them, except the ones in
`MAY_CHANGE_ON_RESUME`, which say how long to run, where to write, what to log and evaluate, or how fast to compute
the same steps.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

from rglcd.inputs import shown

T = TypeVar("T")

# Settings (of any trainer) a resume may change: the run's length and stops, its outputs and logging, validation,
# and speed options that compute the same steps. Every other setting shapes training and must match the checkpoint's.
# `max_steps` may grow or shrink, but where a schedule is drawn over it (the teacher's and the autoencoder's cosine
# learning rate, the iCT curriculum, MLCM's progressive stages) the steps after the resume follow the new length.
# `processes` (recorded beside the settings) may change too, to go on with another machine: the global batch is the
# per-process batch times it, so it changes with them (a streamed epoch restarts on a new rank, docs/training.md).
MAY_CHANGE_ON_RESUME: frozenset[str] = frozenset({
    "max_steps", "stop_at", "resume", "output_dir", "checkpoint_every", "log_every", "report_to",
    "eval_every", "eval_steps", "eval_guidance", "eval_images", "classifier",
    "export_dir", "export_dtype", "member", "replace_shipped",
    "dataloader_num_workers", "compile", "gradient_checkpointing", "channels_last", "processes",
})


class SettingError(ValueError):
    """A setting's value of the wrong type or out of its declared range; the message names the setting."""


def setting(default: Any, help: str, low: float | None = None, high: float | None = None,
            choices: Iterable[str] | None = None) -> Any:
    """A config field with default `default`, its meaning `help` (one sentence, shown by `--help`) and the values it
    allows: numbers (each element of a tuple) in [low, high] (None: unbounded), text one of `choices` (a registry's
    names where one exists)."""
    allowed = {"low": low, "high": high, "choices": None if choices is None else tuple(choices)}
    return dataclasses.field(default=default, metadata={"help": help, **allowed})


def section(cls: type) -> Any:
    """A config field holding the settings section `cls` (a dataclass whose fields all have defaults)."""
    return dataclasses.field(default_factory=cls, metadata={"section": True})


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def sections(cls: type) -> list[tuple[str | None, type, list[dataclasses.Field]]]:
    """(section name or None for the top level, its class, its setting fields) of a config class, top level first."""
    top, nested = [], []
    hints = _hints(cls)
    for f in dataclasses.fields(cls):
        if f.metadata.get("section"):
            nested.append((f.name, hints[f.name], list(dataclasses.fields(hints[f.name]))))
        else:
            top.append(f)
    return [(None, cls, top)] + nested


def setting_types(cls: type) -> dict[str, Any]:
    """{setting name: its type hint} over the config and its sections."""
    out: dict[str, Any] = {}
    for name, owner, fields in sections(cls):
        hints = _hints(owner)
        out.update({f.name: hints[f.name] for f in fields})
    return out


def flat_names(cls: type) -> list[str]:
    """Every setting's name, top level then section by section."""
    return [f.name for _, _, fields in sections(cls) for f in fields]


def build_config(cls: type[T], values: dict[str, Any]) -> T:
    """`cls` from flat {setting: value} (missing settings keep their defaults; a nested {section: {setting: value}}
    is read too); ValueError naming unknown settings."""
    flat = dict(values)
    for name, _, _ in sections(cls)[1:]:
        if isinstance(flat.get(name), dict):
            flat.update(flat.pop(name))
    unknown = sorted(set(flat) - set(flat_names(cls)))
    if unknown:
        raise ValueError(f"unknown settings: {', '.join(unknown)}")
    kwargs: dict[str, Any] = {}
    for name, owner, fields in sections(cls):
        mine = {f.name: flat[f.name] for f in fields if f.name in flat}
        if name is None:
            kwargs.update(mine)
        else:
            kwargs[name] = owner(**mine)
    return cls(**kwargs)


def flat_values(cfg: Any) -> dict[str, Any]:
    """{setting: value} of a config and its sections (what a tracker logs, what a run records)."""
    out: dict[str, Any] = {}
    for name, _, fields in sections(type(cfg)):
        owner = cfg if name is None else getattr(cfg, name)
        out.update({f.name: getattr(owner, f.name) for f in fields})
    return out


def help_text(f: dataclasses.Field) -> str | None:
    """A setting's meaning, or None when it has none."""
    return f.metadata.get("help")


def _kind(hint: Any) -> tuple[Any, bool, bool]:
    """(scalar type, None allowed, a tuple of them) of a setting's type hint (int, float | None, tuple[int, ...])."""
    args = typing.get_args(hint)
    optional = type(None) in args
    if optional:
        hint = next(a for a in args if a is not type(None))
    if typing.get_origin(hint) is tuple:
        return typing.get_args(hint)[0], optional, True
    return hint, optional, False


def _allowed(kind: Any, meta: Any, many: bool) -> str:
    """What a setting allows, in words: 'a whole number >= 1', 'a number between 0 and 1', 'one of huber, l2'."""
    if kind is bool:
        return "true or false"
    if kind is str:
        return f"one of {', '.join(meta['choices'])}" if meta.get("choices") else "text"
    what = "whole number" if kind is int else "number"
    low, high = meta.get("low"), meta.get("high")
    lo, hi = (f"{b:g}" if isinstance(b, float) else str(b) for b in (low, high))  # 4294967295, not 4.29497e+09
    span = (f" between {lo} and {hi}" if low is not None and high is not None else
            f" >= {lo}" if low is not None else f" <= {hi}" if high is not None else "")
    return f"a list of {what}s{span}" if many else f"a {what}{span}"


def _scalar_ok(kind: Any, meta: Any, value: Any) -> bool:
    if kind is bool or kind is str:
        return isinstance(value, kind) and (kind is bool or not meta.get("choices") or value in meta["choices"])
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if kind is int and not isinstance(value, int):  # YAML's 2.5 (or 2.0) where steps are counted
        return False
    if isinstance(value, float) and not math.isfinite(value):
        return False
    low, high = meta.get("low"), meta.get("high")
    return (low is None or value >= low) and (high is None or value <= high)


def check_value(f: dataclasses.Field, hint: Any, value: Any, name: str) -> None:
    """SettingError naming `name` (a flag or a recipe key) when `value` is not of `hint`'s type or out of `f`'s
    declared range or choices; a tuple setting checks each element."""
    kind, optional, many = _kind(hint)
    if value is None:
        # the command line reads 'none' as None, so a text setting that offers 'none' gets None for it
        if optional or "none" in (f.metadata.get("choices") or ()):
            return
    elif many:
        if isinstance(value, (tuple, list)) and value and all(_scalar_ok(kind, f.metadata, v) for v in value):
            return
    elif _scalar_ok(kind, f.metadata, value):
        return
    got = f"a list {shown(list(value), 40)}" if isinstance(value, (list, tuple)) and not many else shown(value, 40)
    raise SettingError(f"{name} must be {_allowed(kind, f.metadata, many)}"
                       f"{' (or none)' if optional else ''}, got {got}")


def check_values(cls: type, values: dict[str, Any], name_of: Any = None) -> None:
    """SettingError for the first of flat {setting: value} whose type or range is wrong for config `cls`;
    `name_of(setting)` names it in the message (default: the setting's name)."""
    hints = setting_types(cls)
    fields = {f.name: f for _, _, fs in sections(cls) for f in fs}
    for key, value in values.items():
        if key in fields:
            check_value(fields[key], hints[key], value, name_of(key) if name_of else key)
