"""MLCMScheduler: the multistep (segment) consistency sampler as a diffusers scheduler.

For `num_inference_steps` = n the trajectory splits into n segments on the 50-point skipping-step grid
(`rglcd.schedule.segment_edges`); step i runs the student at the upper edge of segment i and jumps
deterministically to its lower edge with the student's own x0 and eps estimates (`segment_output`), so with n equal
to the segments the model was trained with, each step is exactly what it learnt; the last jump lands on the clean
end through the LCM boundary scalings. There is no re-noising (unlike LCMScheduler's multistep sampling).

Works in diffusers' LatentConsistencyModelPipeline (guidance embedding) and in StableDiffusionPipeline (LoRA
students at guidance scale 1), and round-trips through `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput

from rglcd.consistency import segment_output
from rglcd.schedule import grid_timestep, scaled_linear_alphas_cumprod, segment_edges


@dataclass
class MLCMSchedulerOutput(BaseOutput):
    """prev_sample: z at the segment's lower edge (B,C,H,W); denoised: the clean estimate at this step (B,C,H,W)."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor


class MLCMScheduler(SchedulerMixin, ConfigMixin):
    """Deterministic segment-consistency sampling on the skipping-step DDIM grid (MLCM / TLCM).

    Config: the teacher's DDPM schedule (`num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`: only
    SD's "scaled_linear" and "linear"), `original_inference_steps` (the grid size N, 50) and `prediction_type`.
    """

    order = 1
    _compatibles = ["LCMScheduler", "DDIMScheduler", "DDPMScheduler", "PNDMScheduler",
                    "EulerDiscreteScheduler"]

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", original_inference_steps: int = 50,
                 prediction_type: str = "epsilon") -> None:
        if beta_schedule == "scaled_linear":
            self.alphas_cumprod = scaled_linear_alphas_cumprod(num_train_timesteps, beta_start, beta_end)
        elif beta_schedule == "linear":
            betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float64)
            self.alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).float()
        else:
            raise NotImplementedError(f"MLCMScheduler supports beta_schedule scaled_linear and linear, "
                                      f"not {beta_schedule!r}")
        self.init_noise_sigma = 1.0
        self.num_inference_steps: int | None = None
        self.timesteps = torch.empty(0, dtype=torch.int64)
        self._edges = torch.empty(0, dtype=torch.int64)

    def scale_model_input(self, sample: torch.Tensor, timestep: int | None = None) -> torch.Tensor:
        """Identity (kept for the pipelines' interface)."""
        return sample

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None,
                      original_inference_steps: int | None = None, **unused: object) -> None:
        """Timesteps (n,) descending: the upper edges of n segments of the grid (n = 4, N = 50: 999, 739, 499, 239).

        `original_inference_steps` (sent by LatentConsistencyModelPipeline) overrides the grid size N.
        """
        grid = original_inference_steps or self.config.original_inference_steps
        if not 1 <= num_inference_steps <= grid:
            raise ValueError(f"num_inference_steps must be between 1 and {grid}, got {num_inference_steps}")
        edges = segment_edges(num_inference_steps, grid)
        times = grid_timestep(edges, self.config.num_train_timesteps, grid)
        self.num_inference_steps = num_inference_steps
        self.timesteps = times[1:].flip(0).to(device)
        self._edges = times[:-1].flip(0)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> MLCMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """Jump z_t `sample` (B,C,H,W) at the i-th timestep to the next edge with the model output at it."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps before step")
        t = torch.full((sample.shape[0],), int(timestep), dtype=torch.int64, device=sample.device)
        i = int((self.timesteps.cpu() == int(timestep)).nonzero()[0, 0])
        edge = torch.full_like(t, int(self._edges[i]))
        ac, pt = self.alphas_cumprod, self.config.prediction_type
        prev = segment_output(model_output.float(), sample.float(), t, edge, ac, pt).to(sample.dtype)
        clean = torch.zeros_like(t)
        denoised = segment_output(model_output.float(), sample.float(), t, clean, ac, pt).to(sample.dtype)
        if not return_dict:
            return prev, denoised
        return MLCMSchedulerOutput(prev_sample=prev, denoised=denoised)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
