"""Teacher trajectories: states of the teacher's own DDIM + CFG sampling, the training inputs of MLCM.

Each trajectory starts from pure noise at the top of the 50-point skipping-step grid and runs the teacher's DDIM
solver with CFG scale 1+w (w ~ U[w_min, w_max], LCM convention) down the grid, for one prompt of a caption table;
all N+1 states (positions 0..N, `rglcd.schedule.grid_timestep`) are kept, so consecutive states are exactly the
(z_{t_{n+k}}, z_{t_n}) pairs of one teacher step. Made from prompts only, no images.

Written once as shards (`shard-00000.pt`: states (n, N+1, C, h, w) fp16, prompt (n,) int64, w (n,) float32) under a
folder named by a key of everything they depend on (teacher weights, grid, w range, seed, count); a set is reused
by later runs, an interrupted one resumes at the first missing shard, and under several processes rank r writes
shards r, r+P, ... .
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from rglcd.files import atomic_path, write_json

SHARD_SIZE = 256


@dataclass(frozen=True)
class TrajectorySpec:
    """What a trajectory set depends on; `key` names its folder."""

    teacher_digest: str
    count: int
    num_ddim_timesteps: int = 50
    w_min: float = 2.0
    w_max: float = 8.0
    seed: int = 0
    num_prompts: int = 0

    @property
    def key(self) -> str:
        return hashlib.sha1(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


def weights_digest(module: torch.nn.Module) -> str:
    """A short hash of a module's parameters and buffers (names, shapes and values)."""
    h = hashlib.sha1()
    for name, tensor in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


@torch.no_grad()
def sample_trajectories(teacher, noise: torch.Tensor, context: torch.Tensor, uncond_context: torch.Tensor,
                        w: torch.Tensor, grid: torch.Tensor, teacher_step) -> torch.Tensor:
    """The N+1 states (B, N+1, C, h, w), position 0 (clean end) first, of the teacher's DDIM + CFG sampling from
    `noise` (B,C,h,w) down the skipping-step `grid` (N,); `teacher_step(teacher, z, t, ctx, uctx, w)` is the
    objective's CFG DDIM step to t - k (`LCDLoss.teacher_step`)."""
    states = [noise]
    z = noise
    for t in grid.flip(0).tolist():
        z = teacher_step(teacher, z, torch.full((z.shape[0],), t, dtype=torch.int64, device=z.device), context,
                         uncond_context, w)
        states.append(z)
    return torch.stack(states[::-1], dim=1)


class TrajectorySet:
    """A written trajectory set, loaded memory-mapped: states (M, N+1, C, h, w), prompt (M,), w (M,)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        shards = sorted(folder.glob("shard-*.pt"))
        if not shards:
            raise FileNotFoundError(f"no trajectory shards in {folder}")
        parts = [torch.load(p, mmap=True, weights_only=True) for p in shards]
        self.states = torch.cat([p["states"] for p in parts])
        self.prompt = torch.cat([p["prompt"] for p in parts])
        self.w = torch.cat([p["w"] for p in parts])

    def __len__(self) -> int:
        return len(self.prompt)

    def batch(self, batch_size: int, index: torch.Tensor, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Random trajectories at grid indices `index` (B,) (start position index+1, end position index):
        (z_start (B,C,h,w) float32, z_end, prompt ids (B,), w (B,))."""
        rows = torch.randint(len(self), (batch_size,), generator=generator)
        z_start = self.states[rows, index + 1].float()
        z_end = self.states[rows, index].float()
        return z_start, z_end, self.prompt[rows], self.w[rows]


def write_trajectories(folder: Path, spec: TrajectorySpec, teacher, context: torch.Tensor,
                       uncond_context: torch.Tensor, latent_shape: tuple[int, ...], grid: torch.Tensor,
                       teacher_step, batch_size: int = 64, rank: int = 0, world: int = 1,
                       device: torch.device | str = "cpu") -> None:
    """Write this process's missing shards of `spec` into `folder` (atomic renames); `context` is the caption table
    (P,L,D) the prompt ids index, `latent_shape` (C,h,w). Shard s draws its noise, prompts and w from seed (seed, s).
    """
    folder.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        write_json(folder / "spec.json", asdict(spec))
    num_shards = -(-spec.count // SHARD_SIZE)
    mine = [s for s in range(num_shards) if s % world == rank and not (folder / f"shard-{s:05d}.pt").exists()]
    for s in tqdm(mine, desc="teacher trajectories", disable=rank != 0 or not mine):
        n = min(SHARD_SIZE, spec.count - s * SHARD_SIZE)
        g = torch.Generator().manual_seed(spec.seed * 1_000_003 + s)
        prompt = torch.randint(len(context), (n,), generator=g)
        w = spec.w_min + (spec.w_max - spec.w_min) * torch.rand(n, generator=g)
        noise = torch.randn((n, *latent_shape), generator=g)
        chunks = []
        for i in range(0, n, batch_size):
            sl = slice(i, i + batch_size)
            ctx = context[prompt[sl]].float().to(device)
            chunks.append(sample_trajectories(teacher, noise[sl].to(device), ctx,
                                              uncond_context.float().to(device).expand_as(ctx), w[sl].to(device),
                                              grid, teacher_step).half().cpu())
        with atomic_path(folder / f"shard-{s:05d}.pt") as tmp:
            torch.save({"states": torch.cat(chunks), "prompt": prompt, "w": w}, tmp)


def teacher_trajectories(root: Path, spec: TrajectorySpec, teacher, context: torch.Tensor,
                         uncond_context: torch.Tensor, latent_shape: tuple[int, ...], grid: torch.Tensor,
                         teacher_step, batch_size: int = 64, accelerator=None) -> TrajectorySet:
    """The trajectory set of `spec` under `root/<key>`: written where missing (every process writes its shards,
    then all wait), then loaded. See `write_trajectories` for the arguments."""
    folder = Path(root) / spec.key
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    device = accelerator.device if accelerator else "cpu"
    write_trajectories(folder, spec, teacher, context, uncond_context, latent_shape, grid, teacher_step,
                       batch_size, rank, world, device)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return TrajectorySet(folder)
