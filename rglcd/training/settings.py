"""Trainer configs as dataclasses whose fields say what they mean, grouped in sections.

`setting(default, help)` is a dataclass field with its meaning in the metadata (the CLI's `--help` shows it). A
config may hold sections: fields whose type is itself a dataclass of settings (e.g. `DistillConfig.mlcm`). Setting
names are unique across a config and its sections, so the command line and the YAML recipes stay flat
(`--segments 4`, `segments: 4`); `build_config` puts each value in its section.

A checkpoint records a run's settings (`rglcd.training.checkpoints`); a resume must repeat them, except the ones in
`MAY_CHANGE_ON_RESUME`, which say how long to run, where to write, what to log and evaluate, or how fast to compute
the same steps.
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, TypeVar

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


def setting(default: Any, help: str) -> Any:
    """A config field with default `default` and its meaning `help` (one sentence, shown by `--help`)."""
    return dataclasses.field(default=default, metadata={"help": help})


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
