"""Which trainer runs a registered method (`rglcd.methods.Method.trainer`): its inputs (built at the entry point),
train function and config class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rglcd.inputs import exit_usage
from rglcd.methods import METHODS, Trainer
from rglcd.training.distill import DistillConfig, distill_inputs, train_distill
from rglcd.training.ict import ICTConfig, ict_inputs, train_ict


@dataclass(frozen=True)
class TrainerEntry:
    """A trainer: `train(cfg, inputs) -> final metrics`, its config class, and `inputs(cfg)`, what the entry point
    builds and hands to it (the family and the data)."""

    train: Callable[..., dict[str, float]]
    config: type
    inputs: Callable[[Any], Any]


TRAINERS: dict[Trainer, TrainerEntry] = {Trainer.DISTILL: TrainerEntry(train_distill, DistillConfig, distill_inputs),
                                         Trainer.ICT: TrainerEntry(train_ict, ICTConfig, ict_inputs)}


def trainer_for(method: str | None) -> TrainerEntry:
    """The trainer of `method` (None: the distillation trainer, whose default method is lcd); an unknown method exits
    with a usage line naming the known ones."""
    if method is None:
        return TRAINERS[Trainer.DISTILL]
    if method not in METHODS:
        exit_usage(f"unknown method {method!r}; this version implements: {', '.join(METHODS)}")
    return TRAINERS[METHODS[method].trainer]
