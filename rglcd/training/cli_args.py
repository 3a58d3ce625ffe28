"""Command-line flags from a trainer's config dataclass: every setting (`rglcd.training.settings`, sections
included) becomes `--setting-name` with its meaning as help, plus `--threads` and `--config recipe.yaml` (a recipe
in train/configs/: its keys are setting names; flags given on the command line win)."""

from __future__ import annotations

import argparse
import json
import os
import sys
import typing
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from rglcd.inputs import InputError, OneLineParser, exit_usage, shown
from rglcd.logs import quiet_libraries
from rglcd.models import ModelLoadError
from rglcd.training.settings import (SettingError, build_config, check_values, flat_names, help_text, sections,
                                    setting_types)

T = TypeVar("T")


def _parser_type(hint: Any) -> tuple[Any, dict]:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin is tuple:
        return _or_none(args[0]), {"nargs": "+"}
    if args and origin is not tuple and len(args) == 1:  # X | None: 'none' clears what a recipe set
        kind, extra = _parser_type(args[0])
        return (_or_none(kind) if type(None) in typing.get_args(hint) and not extra else kind), extra
    if hint is bool:  # `--flag` alone is true; `--flag false` also reads
        return _boolean, {"nargs": "?", "const": True}
    return hint, {}


def _boolean(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {shown(text)}")


def _or_none(kind: Any) -> Any:
    """An argparse type that also reads 'none' (so `--progressive none` or `--phrasings none` clears a setting a
    recipe gave); named after `kind`, so argparse still says "invalid int value"."""
    def parse(text: str) -> Any:
        return None if text.lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")
    return parse


def read_recipe(path: str) -> dict[str, Any]:
    """A YAML recipe file as a mapping; InputError (one line) when it is missing, a folder, not YAML or not a
    mapping of settings."""
    import yaml

    try:
        with open(path) as fh:
            recipe = yaml.safe_load(fh)
    except FileNotFoundError:
        raise InputError(f"recipe not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"--config {path} is a folder: give a recipe file (train/configs/*.yaml)") from None
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        raise InputError(f"recipe {path} is not valid YAML{line}") from None
    if recipe is None:
        return {}
    if not isinstance(recipe, dict):
        raise InputError(f"recipe {path} must be a mapping of settings (key: value), got a {type(recipe).__name__}")
    return recipe


def load_recipe(path: str, cls: type) -> dict[str, Any]:
    """A YAML recipe as flat {setting: value} (a section may also be written as a nested mapping); unknown keys are
    an InputError naming them."""
    recipe = read_recipe(path)
    for name, _, _ in sections(cls)[1:]:
        if isinstance(recipe.get(name), dict):
            recipe.update(recipe.pop(name))
    unknown = sorted(set(map(str, recipe)) - set(flat_names(cls)))
    if unknown:
        raise InputError(f"unknown keys in {path}: {', '.join(unknown)} (see --help for the settings)")
    return {k: tuple(v) if isinstance(v, list) else v for k, v in recipe.items()}


def parse_config(cls: type[T], description: str | None = None, argv: list[str] | None = None) -> T:
    """Parse argv into `cls` (a dataclass of settings, maybe with sections); `--threads N` sets torch's CPU threads
    (0 keeps torch's default). Every value, flag or recipe key, is checked against its setting's type and declared
    range (`rglcd.training.settings.setting`) before the trainer runs: one `error:` line, exit 2."""
    pre = OneLineParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    try:
        recipe = load_recipe(known.config, cls) if known.config else {}
    except InputError as err:
        exit_usage(str(err))
    parser = OneLineParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML recipe (train/configs/*.yaml); command-line flags override it")
    hints = setting_types(cls)
    for name, owner, fields in sections(cls):
        title = (owner.__doc__ or name or "").strip().splitlines()[0] if name else None
        group = parser if name is None else parser.add_argument_group(f"{name} settings", title)
        for f in fields:
            kind, extra = _parser_type(hints[f.name])
            default = recipe.get(f.name, f.default)
            meaning = help_text(f)
            shown_help = f"{meaning} (default: {default})" if meaning else f"default: {default}"
            group.add_argument("--" + f.name.replace("_", "-"), type=kind, default=default, **extra,
                               help=shown_help.replace("%", "%%"))  # argparse formats help with %
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--verbose", action="store_true", help="show the libraries' loading bars and warnings")
    ns = vars(parser.parse_args(argv))
    threads = ns.pop("threads")
    ns.pop("config")
    quiet_libraries(ns.pop("verbose"))
    if threads > 0:
        torch.set_num_threads(threads)
    for key, value in ns.items():
        if isinstance(value, str) and value.lower() == "none":
            ns[key] = None
        elif isinstance(value, list):
            ns[key] = None if all(v is None for v in value) else tuple(value)

    def name_of(key: str) -> str:  # a recipe's value keeps its identity unless a flag replaced it
        return f"{key} in {known.config}" if key in recipe and ns[key] is recipe[key] else "--" + key.replace("_", "-")

    try:
        check_values(cls, ns, name_of)
    except SettingError as err:
        exit_usage(str(err))
    return build_config(cls, ns)


def requested_method(argv: list[str] | None = None) -> str | None:
    """The `--method` of a command line, else the `method` key of its `--config` recipe, else None (so an entry point
    can pick the trainer before parsing the rest)."""
    pre = OneLineParser(add_help=False)
    pre.add_argument("--method")
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.method or not known.config:
        return known.method
    try:
        method = read_recipe(known.config).get("method")
    except InputError:
        return None  # parse_config reports the bad recipe
    return method if isinstance(method, str) else None  # parse_config reports a method that is not text


def run_trainer(train: Callable[..., Any], cls: type[T], description: str | None = None,
                argv: list[str] | None = None, print_result: bool = False,
                inputs: Callable[[T], Any] | None = None) -> int:
    """An entry point's body: parse argv into `cls`, build what `inputs(cfg)` builds (a trainer's family and data,
    `rglcd.training.trainers`), run `train(cfg, inputs)` (or `train(cfg)`), return the exit status. A ValueError,
    ModelLoadError or OSError (how the trainers report bad input: an unknown family or tracker, a missing file, data
    that matches nothing; also a full disk mid-run, after the last checkpoint) prints one `error:` line and returns 2;
    RGLCD_DEBUG=1 re-raises it with its traceback."""
    cfg = parse_config(cls, description, argv)
    try:
        result = train(cfg) if inputs is None else train(cfg, inputs(cfg))
    except (ValueError, ModelLoadError, OSError) as err:
        if os.environ.get("RGLCD_DEBUG"):
            raise
        print(f"error: {err}", file=sys.stderr)
        return 2
    if print_result:
        print(json.dumps(result, indent=2))
    return 0
