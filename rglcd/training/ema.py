"""The exponential moving average of weights every trainer keeps: one update (`ema_update`, a foreach lerp) and
`EMA`, shadow copies of a network's parameters with an optional warm-up of the decay.

The distillation trainers average into the target network itself (`ema_update(target, student, decay)`, constant
decay); the teacher and iCT keep shadow copies for evaluation and export (`EMA`, warm-up `power` and `ratio`: the
decay schedules of diffusers' `EMAModel`, `use_ema_warmup=True` and its default).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

WARMUPS = ("none", "ratio", "power")

Weights = torch.nn.Module | Iterable[torch.Tensor]


def _tensors(weights: Weights) -> list[torch.Tensor]:
    return list(weights.parameters() if isinstance(weights, torch.nn.Module) else weights)


@torch.no_grad()
def ema_update(target: Weights, online: Weights, decay: float) -> None:
    """target <- decay * target + (1 - decay) * online, in place, one foreach kernel; modules or tensor lists of
    the same shapes, in the same order."""
    torch._foreach_lerp_(_tensors(target), [p.detach() for p in _tensors(online)], 1 - decay)


def ema_decay(update: int, decay: float, warmup: str = "none", inv_gamma: float = 1.0, power: float = 2 / 3
              ) -> float:
    """The decay of the `update`-th update (1-based). "none": `decay` throughout. With a warm-up (diffusers'
    `EMAModel.get_decay`) the first update copies the weights (decay 0), then with n = update - 1 the decay is
    min(decay, (1 + n) / (10 + n)) ("ratio") or min(decay, 1 - (1 + n / inv_gamma) ** -power) ("power")."""
    if warmup not in WARMUPS:
        raise ValueError(f"unknown EMA warm-up {warmup!r}: use one of {', '.join(WARMUPS)}")
    if warmup == "none":
        return decay
    n = update - 1
    if n <= 0:
        return 0.0
    value = 1 - (1 + n / inv_gamma) ** -power if warmup == "power" else (1 + n) / (10 + n)
    return min(value, decay)


class EMA:
    """Shadow copies of `parameters` averaged by `update(parameters)` with `ema_decay(update, decay, warmup)`.

    `state_dict` / `load_state_dict` let accelerate checkpoint it (`register_for_checkpointing`); they read the
    checkpoints diffusers' `EMAModel` wrote (keys `optimization_step`, `shadow_params`). Loading copies into the
    shadows in place, so they stay on their device (accelerate loads custom states on the CPU).
    """

    def __init__(self, parameters: Weights, decay: float, warmup: str = "none", inv_gamma: float = 1.0,
                 power: float = 2 / 3):
        ema_decay(1, decay, warmup)  # a bad warm-up fails here
        self.shadow = [p.detach().clone() for p in _tensors(parameters)]
        self.decay, self.warmup, self.inv_gamma, self.power = decay, warmup, inv_gamma, power
        self.updates = 0

    def update(self, parameters: Weights) -> None:
        """Average the current `parameters` (those given at construction, in the same order) into the shadows."""
        self.updates += 1
        ema_update(self.shadow, parameters, ema_decay(self.updates, self.decay, self.warmup, self.inv_gamma,
                                                      self.power))

    @torch.no_grad()
    def copy_to(self, parameters: Weights) -> None:
        """Write the averaged weights into `parameters` (e.g. a fresh copy of the network, for evaluation)."""
        for target, shadow in zip(_tensors(parameters), self.shadow, strict=True):
            target.copy_(shadow)

    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A fresh module of `model`'s class and config (a diffusers model) holding the averaged weights, on the
        CPU, in eval mode."""
        fresh = type(model).from_config(model.config)
        self.copy_to(fresh.parameters())
        return fresh.eval()

    def to(self, device: torch.device | str) -> EMA:
        self.shadow = [s.to(device) for s in self.shadow]
        return self

    def state_dict(self) -> dict[str, object]:
        return {"optimization_step": self.updates, "shadow_params": self.shadow}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, object]) -> None:
        shadow = list(state["shadow_params"])
        if len(shadow) != len(self.shadow):
            raise ValueError(f"EMA state holds {len(shadow)} tensors, this network has {len(self.shadow)}")
        for mine, saved in zip(self.shadow, shadow):
            mine.copy_(saved)
        self.updates = int(state["optimization_step"])
