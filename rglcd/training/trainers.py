"""Which trainer runs a registered method (`rglcd.methods.Method.trainer`): its train function and config class."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rglcd.inputs import exit_usage
from rglcd.methods import METHODS, Trainer
from rglcd.training.distill import DistillConfig, train_distill
from rglcd.training.ict import ICTConfig, train_ict

TRAINERS: dict[Trainer, tuple[Callable[..., dict[str, float]], type]] = {Trainer.DISTILL: (train_distill, DistillConfig),
                                                                         Trainer.ICT: (train_ict, ICTConfig)}


def trainer_for(method: str | None) -> tuple[Callable[..., dict[str, float]], Any]:
    """(train function, config class) of `method` (None: the distillation trainer, whose default method is lcd);
    an unknown method exits with a usage line naming the known ones."""
    if method is None:
        return TRAINERS[Trainer.DISTILL]
    if method not in METHODS:
        exit_usage(f"unknown method {method!r}; this version implements: {', '.join(METHODS)}")
    return TRAINERS[METHODS[method].trainer]
