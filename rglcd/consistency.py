"""The consistency parameterisation and its distances; pure tensor functions shared by objectives and samplers.

f(z_t, t) = c_skip(t) z_t + c_out(t) x0_hat(z_t, t), with x0_hat from the network output (epsilon, v or sample
prediction) and (c_skip, c_out) from `rglcd.schedule.boundary_scalings`, so f(z_0, 0) = z_0 exactly.

Consistency models in sigma parameterisation (iCT): f(x, sigma) = c_skip(sigma) x + c_out(sigma) F with
`rglcd.schedule.cm_scalings`, so f(x, sigma_min) = x exactly (`cm_output`).
"""

from __future__ import annotations

import torch

from rglcd.schedule import (SIGMA_DATA, SIGMA_MIN, boundary_scalings, cm_scalings, ddim_solver_step, predicted_noise,
                            predicted_x0)


def consistency_output(model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
                       alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """f(z_t, t) (B,C,H,W) from the network output at z_t = `sample` and integer timesteps (B,)."""
    c_skip, c_out = boundary_scalings(timesteps)
    shape = (-1,) + (1,) * (sample.ndim - 1)
    x0 = predicted_x0(model_output, timesteps, sample, alphas_cumprod, prediction_type)
    return c_skip.view(shape).to(sample) * sample + c_out.view(shape).to(sample) * x0


def pseudo_huber(pred: torch.Tensor, target: torch.Tensor, c: float) -> torch.Tensor:
    """Per-sample pseudo-Huber distance sqrt(||d||^2 + c^2) - c on the flattened difference, (B,)."""
    d2 = (pred.float() - target.float()).flatten(1).pow(2).sum(1)
    return (d2 + c * c).sqrt() - c


LOSS_TYPES = ("huber", "l2")  # the distances consistency_distance computes (the trainers' --loss-type)


def consistency_distance(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                         huber_c: float = 0.001) -> torch.Tensor:
    """Per-sample distance (B,): 'l2' = mean squared error, 'huber' = elementwise pseudo-Huber mean as in the LCD
    scripts (sqrt(d^2 + c^2) - c averaged over elements)."""
    diff = pred.float() - target.float()
    if loss_type == "l2":
        return diff.pow(2).flatten(1).mean(1)
    if loss_type == "huber":
        return ((diff.pow(2) + huber_c ** 2).sqrt() - huber_c).flatten(1).mean(1)
    raise ValueError(f"unknown loss_type {loss_type!r}: use {' or '.join(LOSS_TYPES)}")


CLEAN_ENDS = ("ddim", "lcm")


def segment_output(model_output: torch.Tensor, sample: torch.Tensor, timesteps: torch.Tensor,
                   edge_timesteps: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon",
                   clean_end: str = "ddim") -> torch.Tensor:
    """Multistep (segment) consistency output: z_t (B,C,H,W) mapped to its segment's lower edge (B,) timesteps.

    A DDIM jump with the network's own x0 and eps estimates, alpha_e x0_hat + sigma_e eps_hat, so the output is
    z_t exactly when t is the edge. The lowest segment (edge timestep 0): "ddim" is the same jump, to
    alphas_cumprod[0] (phased consistency distillation's); "lcm" is `consistency_output` (the LCD
    parameterisation, so one segment is LCD; the shipped emoji-64 `mlcm` was trained with it).
    """
    if clean_end not in CLEAN_ENDS:
        raise ValueError(f"unknown clean end {clean_end!r}: use {' or '.join(CLEAN_ENDS)}")
    x0 = predicted_x0(model_output, timesteps, sample, alphas_cumprod, prediction_type)
    eps = predicted_noise(model_output, timesteps, sample, alphas_cumprod, prediction_type)
    jump = ddim_solver_step(x0, eps, edge_timesteps, alphas_cumprod)
    if clean_end == "ddim":
        return jump
    clean = consistency_output(model_output, sample, timesteps, alphas_cumprod, prediction_type)
    shape = (-1,) + (1,) * (sample.ndim - 1)
    return torch.where((edge_timesteps == 0).view(shape).to(sample.device), clean, jump)


def cm_output(model_output: torch.Tensor, sample: torch.Tensor, sigma: torch.Tensor, sigma_min: float = SIGMA_MIN,
              sigma_data: float = SIGMA_DATA) -> torch.Tensor:
    """f(x, sigma) = c_skip x + c_out F (B,C,H,W) from the raw network output F at x = `sample` and sigma (B,) or ()."""
    c_skip, c_out, _ = cm_scalings(sigma, sigma_min, sigma_data)
    shape = (-1,) + (1,) * (sample.ndim - 1) if sigma.ndim else ()
    return c_skip.view(shape).to(sample) * sample + c_out.view(shape).to(sample) * model_output


def ict_huber_c(dim: int) -> float:
    """iCT's pseudo-Huber constant c = 0.00054 sqrt(d) for samples of d = C*H*W values (0.0173 for 1x32x32)."""
    return 0.00054 * dim ** 0.5
