"""The global batch of a multi-process run and this process's share of it.

Every process draws the whole step's batch (data, noise, timesteps, guidance, dropout) from the step's generator,
the same on every process, and keeps rows [rank*B, (rank+1)*B) of it, B the per-process batch: with gradients
averaged across processes (DDP), N processes at batch B then take the step one process takes at batch N*B, and the
number of processes is no hyper-parameter. A stream whose shards are split across processes (`local_samples`)
cannot be drawn globally: it gives each process its own samples, drawn with the process's own generator.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch

from rglcd.data.batches import EncodedBatches
from rglcd.training.checkpoints import step_generator

T = TypeVar("T", torch.Tensor, list)


def rank_rows(value: T, rank: int, world: int) -> T:
    """Rows [rank*B, (rank+1)*B) of a global batch `value` (tensor or list) of world*B rows."""
    if len(value) % world:
        raise ValueError(f"a global batch of {len(value)} rows does not split into {world} equal shares")
    per = len(value) // world
    return value[rank * per:(rank + 1) * per]


def share_rows(value: T, rank: int, world: int, rows: int) -> T:
    """`rank_rows` of `value` when it has the global batch's `rows` rows, else `value` as it is (a per-process
    source's own samples)."""
    return rank_rows(value, rank, world) if len(value) == rows else value


def share_of(values: dict[str, Any], rank: int, world: int, rows: int) -> dict[str, Any]:
    """`share_rows` of each tensor in `values` (a loss's draw); other values (a grid size, a seed) as they are."""
    return {k: share_rows(v, rank, world, rows) if isinstance(v, torch.Tensor) and v.ndim else v
            for k, v in values.items()}


def local_samples(batches: Any) -> bool:
    """Whether the data source yields this process's own samples, encoded as they come (shards split across
    processes, an image folder or hf: set), instead of drawing from tensors every process holds (the emoji set, a
    latent cache): encoding the whole global batch on every process would multiply the encoder's work."""
    return isinstance(batches, EncodedBatches) and batches.cached is None


def data_generator(g: torch.Generator, seed: int, index: int, rank: int, world: int) -> torch.Generator:
    """The generator a per-process source draws this process's samples with: the step's own `g` in a one-process
    run (which so draws as before), else one of (seed, index, rank), leaving `g` the same on every process."""
    return g if world == 1 else step_generator(seed, index, rank)
