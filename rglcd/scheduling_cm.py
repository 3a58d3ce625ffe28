"""CMScheduler: multistep consistency sampling (consistency models, Alg. 1) as a diffusers scheduler.

For n steps at sigmas tau_1 > ... > tau_n (by default the first n points of the descending (n+1)-point Karras grid:
1 step at sigma_max = 80, 2 steps at 80 and 2.52, ...): denoise with the consistency function, re-noise to the next
sigma with x = x0 + sqrt(tau_{i+1}^2 - sigma_min^2) z, and return the last clean estimate.

The sample the pipeline holds is the network's input c_in(sigma) x_sigma, a unit-variance state like a VP latent
(`init_noise_sigma` = c_in(sigma_max) sigma_max, about 1), so `scale_model_input` is the identity and both
StableDiffusionPipeline (which calls it) and LatentConsistencyModelPipeline (which does not) feed the UNet the right
input; the pipeline passes the scheduler's float timesteps c_noise(sigma) to the UNet. `step` returns
(prev_sample, denoised) like LCMScheduler, and prev_sample is the clean estimate itself at the last step.

diffusers' CMStochasticIterativeScheduler is the same sampler with the state in x_sigma (checked equal in
tests/test_ict.py) but returns no `denoised`, clips denoised samples to [-1, 1] by default (wrong for latents) and
picks its sigmas from `num_train_timesteps`, which a family's DDPM config sets to 1000.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from diffusers.utils import BaseOutput
from diffusers.utils.torch_utils import randn_tensor

from rglcd.consistency import cm_output
from rglcd.schedule import SIGMA_DATA, cm_scalings, cm_timestep, karras_sigmas


@dataclass
class CMSchedulerOutput(BaseOutput):
    """prev_sample: the network input at the next sigma, or the clean sample after the last step (B,C,H,W);
    denoised: the clean estimate at this step (B,C,H,W)."""

    prev_sample: torch.Tensor
    denoised: torch.Tensor


class CMScheduler(SchedulerMixin, ConfigMixin):
    """Multistep consistency sampling for a network F trained with f = c_skip x + c_out F(c_in x, 250 log sigma).

    Config: `sigma_min`, `sigma_max`, `sigma_data`, `rho` (the Karras grid of the default sigmas); keys of a DDPM
    config (a family's scheduler) are ignored, so `CMScheduler.from_config(family.scheduler_config)` works.
    """

    order = 1
    _compatibles = ["LCMScheduler", "DDIMScheduler", "DDPMScheduler", "PNDMScheduler", "EulerDiscreteScheduler",
                    "CMStochasticIterativeScheduler"]

    @register_to_config
    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = SIGMA_DATA,
                 rho: float = 7.0) -> None:
        self.init_noise_sigma = float(sigma_max * self._c_in(torch.tensor(sigma_max, dtype=torch.float64)))
        self.num_inference_steps: int | None = None
        self.sigmas = torch.empty(0, dtype=torch.float64)
        self.timesteps = torch.empty(0)

    def _c_in(self, sigma: torch.Tensor) -> torch.Tensor:
        return cm_scalings(sigma, self.config.sigma_min, self.config.sigma_data)[2]

    def scale_model_input(self, sample: torch.Tensor, timestep: float | torch.Tensor | None = None) -> torch.Tensor:
        """Identity: the sample already is the network input c_in x_sigma."""
        return sample

    def set_timesteps(self, num_inference_steps: int | None = None, device: str | torch.device | None = None,
                      sigmas: list[float] | torch.Tensor | None = None, **unused: object) -> None:
        """n steps at the first n points of the descending (n+1)-point Karras grid, or at the given descending
        `sigmas` (n,); `self.sigmas` (n+1,) ends with sigma_min, `self.timesteps` (n,) are c_noise of the first n.
        Other keyword arguments (`original_inference_steps` from LatentConsistencyModelPipeline) are ignored."""
        c = self.config
        if sigmas is None:
            if num_inference_steps is None or num_inference_steps < 1:
                raise ValueError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
            sigmas = karras_sigmas(num_inference_steps + 1, c.sigma_min, c.sigma_max, c.rho).flip(0)[:-1]
        sigmas = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
        if (sigmas[1:] >= sigmas[:-1]).any() or sigmas.min() <= c.sigma_min or sigmas.max() > c.sigma_max:
            raise ValueError(f"sigmas must descend within ({c.sigma_min}, {c.sigma_max}], got {sigmas.tolist()}")
        self.num_inference_steps = len(sigmas)
        self.sigmas = torch.cat([sigmas, sigmas.new_tensor([c.sigma_min])])
        self.timesteps = cm_timestep(sigmas).float().to(device)

    def step(self, model_output: torch.Tensor, timestep: float | torch.Tensor, sample: torch.Tensor,
             generator: torch.Generator | list[torch.Generator] | None = None, return_dict: bool = True
             ) -> CMSchedulerOutput | tuple[torch.Tensor, torch.Tensor]:
        """One step at `timestep` (one of `self.timesteps`): the network output (B,C,H,W) at the state `sample` =
        c_in(sigma) x_sigma (B,C,H,W) gives the clean estimate, re-noised to the next sigma unless it is the last."""
        if self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps before step")
        i = int((self.timesteps.cpu() - float(timestep)).abs().argmin())
        sigma, nxt = self.sigmas[i], self.sigmas[i + 1]
        c = self.config
        x = sample.float() / self._c_in(sigma).float()
        denoised = cm_output(model_output.float(), x, sigma.float(), c.sigma_min, c.sigma_data)
        if i + 1 == self.num_inference_steps:
            prev = denoised
        else:
            noise = randn_tensor(denoised.shape, generator=generator, device=denoised.device, dtype=denoised.dtype)
            prev = self._c_in(nxt).float() * (denoised + float((nxt ** 2 - c.sigma_min ** 2).sqrt()) * noise)
        prev, denoised = prev.to(sample.dtype), denoised.to(sample.dtype)
        if not return_dict:
            return prev, denoised
        return CMSchedulerOutput(prev_sample=prev, denoised=denoised)
