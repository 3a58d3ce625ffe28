"""TCDGammaScheduler: diffusers' `TCDScheduler` (strategic stochastic sampling, TCD paper Sec. 4.2) with its gamma
in the config.

diffusers' TCDScheduler takes gamma as the `eta` argument of every `step` (default 0.3, the paper's), so the
pipeline call must pass it: StableDiffusionPipeline does (`eta=`), LatentConsistencyModelPipeline passes
`eta=None`, which TCDScheduler refuses. Here `eta=None` means the config's `gamma`, so a member's family entry
(`"scheduler": {"gamma": 0.3}`) holds its sampling gamma and every pipeline and front end samples with it. With
`eta` given, a step is TCDScheduler's own, unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import TCDScheduler
from diffusers.configuration_utils import register_to_config


class TCDGammaScheduler(TCDScheduler):
    """TCDScheduler whose `step(..., eta=None)` uses `config.gamma` (0: deterministic, 1: fully stochastic)."""

    @register_to_config
    def __init__(self, num_train_timesteps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012,
                 beta_schedule: str = "scaled_linear", trained_betas: Any = None, original_inference_steps: int = 50,
                 clip_sample: bool = False, clip_sample_range: float = 1.0, set_alpha_to_one: bool = True,
                 steps_offset: int = 0, prediction_type: str = "epsilon", thresholding: bool = False,
                 dynamic_thresholding_ratio: float = 0.995, sample_max_value: float = 1.0,
                 timestep_spacing: str = "leading", timestep_scaling: float = 10.0,
                 rescale_betas_zero_snr: bool = False, gamma: float = 0.3) -> None:
        if not 0 <= gamma <= 1:
            raise ValueError(f"TCD gamma must be between 0 and 1, got {gamma}")
        super().__init__(num_train_timesteps, beta_start, beta_end, beta_schedule, trained_betas,
                         original_inference_steps, clip_sample, clip_sample_range, set_alpha_to_one, steps_offset,
                         prediction_type, thresholding, dynamic_thresholding_ratio, sample_max_value,
                         timestep_spacing, timestep_scaling, rescale_betas_zero_snr)

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, eta: float | None = None,
             generator: torch.Generator | None = None, return_dict: bool = True) -> Any:
        """TCDScheduler.step with gamma `eta`, or the config's gamma when `eta` is None."""
        return super().step(model_output, timestep, sample, self.config.gamma if eta is None else eta, generator,
                            return_dict)
