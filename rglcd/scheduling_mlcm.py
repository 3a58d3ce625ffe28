"""MLCMScheduler: the multistep (segment) consistency sampler as a diffusers scheduler, two ways to sample.

`sampler="deterministic"` (default): for `num_inference_steps` = n the trajectory splits into n segments on the
50-point skipping-step grid (`rglcd.schedule.segment_edges`, config `edge_rounding`); step i runs the student at the
upper edge of segment i and jumps deterministically to its lower edge with the student's own x0 and eps estimates
(`segment_output`, config `clean_end` for the last jump), so with n equal to the segments the model was trained
with, each step is exactly what it learnt. No re-noising.

`sampler="tlcm"`: the released TLCM inference loop (OPPO-Mente-Lab/TLCM `inference.py`): each step predicts x0
from the model's eps (no boundary scalings) and re-noises it with fresh Gaussian noise to the next timestep of
TLCM's step lists, picked from the 9 points linspace(T-1, 0, 9) (4 steps: 999, 749, 499, 124; 1 to 8 steps);
the last step returns its x0.

The config defaults (`edge_rounding` "round", `clean_end` "lcm", deterministic) are the sampler the shipped
emoji-64 `mlcm` was trained for; a member trained with other settings records them in its family entry
(`"scheduler": {...}`), which `Family.pipeline` passes here.

Works in diffusers' LatentConsistencyModelPipeline (guidance embedding) and in StableDiffusionPipeline (LoRA
students at guidance scale 1), and round-trips through `save_pretrained` / `from_pretrained`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from rglcd.consistency import segment_output
from rglcd.schedule import grid_timestep, predicted_x0, scaled_linear_alphas_cumprod, segment_edges

TLCM_STEPS: dict[int, tuple[int, ...]] = {1: (0, 8), 2: (0, 4, 8), 3: (0, 4, 7, 8), 4: (0, 2, 4, 7, 8),
                                          5: (0, 2, 4, 6, 7, 8), 6: (0, 2, 4, 5, 6, 7, 8), 7: (0, 2, 3, 4, 5, 6, 7, 8),
                                          8: (0, 1, 2, 3, 4, 5, 6, 7, 8)}
"""TLCM's step lists: indices into the 9 timesteps linspace(T-1, 0, 9) truncated to integers (the last is 0)."""
SAMPLERS = ("deterministic", "tlcm")


@dataclass
class MLCMSchedulerOutput(BaseOutput):
    """prev_sample: z at the segment's lower edge (B,C,H,W); denoised: the clean estimate at this step (B,C,H,W)."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor


class MLCMScheduler(SchedulerMixin, ConfigMixin):
    """Segment-consistency sampling (MLCM / TLCM): deterministic segment jumps, or TLCM's x0 + fresh noise.

    Config: the teacher's DDPM schedule (`num_train_timesteps`, `beta_start`, `beta_end`, `beta_schedule`: only
    SD's "scaled_linear" and "linear"), `original_inference_steps` (the grid size N, 50), `prediction_type`,
    `edge_rounding` ("round" | "floor"), `clean_end` ("lcm" | "ddim") and `sampler` ("deterministic" | "tlcm").
    """

    order = 1
    _compatibles = ["LCMScheduler", "DDIMScheduler", "DDPMScheduler", "PNDMScheduler",
                    "EulerDiscreteScheduler"]

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", original_inference_steps: int = 50,
                 prediction_type: str = "epsilon", edge_rounding: str = "round", clean_end: str = "lcm",
                 sampler: str = "deterministic") -> None:
        if sampler not in SAMPLERS:
            raise ValueError(f"unknown MLCM sampler {sampler!r}: use {' or '.join(SAMPLERS)}")
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
        """Timesteps (n,) descending. Deterministic: the upper edges of n segments of the grid (n = 4, N = 50:
        999, 739, 499, 239 with floor edges, 999, 759, 499, 239 with round ones). TLCM: its step list (n = 4:
        999, 749, 499, 124; n <= 8).

        `original_inference_steps` (sent by LatentConsistencyModelPipeline) overrides the grid size N.
        """
        if self.config.sampler == "tlcm":
            if num_inference_steps not in TLCM_STEPS:
                raise ValueError(f"the tlcm sampler has step lists for 1 to 8 steps, got {num_inference_steps}")
            top = self.config.num_train_timesteps - 1
            base = torch.linspace(top, 0, 9, dtype=torch.float64).to(torch.int64)
            times = base[list(TLCM_STEPS[num_inference_steps])]
            self.num_inference_steps = num_inference_steps
            self.timesteps = times[:-1].to(device)
            self._edges = times[1:]
            return
        grid = original_inference_steps or self.config.original_inference_steps
        if not 1 <= num_inference_steps <= grid:
            raise ValueError(f"num_inference_steps must be between 1 and {grid}, got {num_inference_steps}")
        edges = segment_edges(num_inference_steps, grid, self.config.edge_rounding)
        times = grid_timestep(edges, self.config.num_train_timesteps, grid)
        self.num_inference_steps = num_inference_steps
        self.timesteps = times[1:].flip(0).to(device)
        self._edges = times[:-1].flip(0)

    def step(self, model_output: torch.Tensor, timestep: int | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | None = None, return_dict: bool = True
             ) -> MLCMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """From z_t `sample` (B,C,H,W) at the i-th timestep and the model output at it, z at the next timestep
        (the clean estimate after the last step); `generator` draws the tlcm sampler's noise."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps before step")
        t = torch.full((sample.shape[0],), int(timestep), dtype=torch.int64, device=sample.device)
        i = int((self.timesteps.cpu() == int(timestep)).nonzero()[0, 0])
        edge = torch.full_like(t, int(self._edges[i]))
        ac, pt = self.alphas_cumprod, self.config.prediction_type
        out, z = model_output.float(), sample.float()
        if self.config.sampler == "tlcm":
            denoised = predicted_x0(out, t, z, ac, pt)
            prev = denoised
            if int(self._edges[i]) > 0:
                a = ac[int(self._edges[i])]
                noise = randn_tensor(out.shape, generator=generator, device=out.device, dtype=out.dtype)
                prev = a.sqrt() * denoised + (1 - a).sqrt() * noise
            prev, denoised = prev.to(sample.dtype), denoised.to(sample.dtype)
        else:
            ce = self.config.clean_end
            prev = segment_output(out, z, t, edge, ac, pt, ce).to(sample.dtype)
            denoised = segment_output(out, z, t, torch.zeros_like(t), ac, pt, ce).to(sample.dtype)
        if not return_dict:
            return prev, denoised
        return MLCMSchedulerOutput(prev_sample=prev, denoised=denoised)

    def __len__(self) -> int:
        return self.config.num_train_timesteps
