"""Noise-schedule math shared by the teachers, the distillation objectives and the samplers; pure tensor functions.

Conventions follow diffusers' LCMScheduler and its consistency-distillation example scripts:
- `alphas_cumprod` (T,) is the DDPM schedule (T = 1000 for SD); alpha_t = sqrt(alphas_cumprod[t]) and
  sigma_t = sqrt(1 - alphas_cumprod[t]) scale data and noise: z_t = alpha_t z_0 + sigma_t eps.
- the skipping-step DDIM grid has N points (N = 50), k = T // N apart (k = 20): 19, 39, ..., 999.
- boundary scalings c_skip/c_out use sigma_data = 0.5 and timestep scaling 10.
- the guidance-scale embedding takes w in LCM convention (pipeline guidance_scale - 1).
"""

from __future__ import annotations

import math

import torch

SIGMA_DATA = 0.5
TIMESTEP_SCALING = 10.0


def scaled_linear_alphas_cumprod(num_train_timesteps: int = 1000, beta_start: float = 0.00085,
                                 beta_end: float = 0.012) -> torch.Tensor:
    """SD's `scaled_linear` schedule: betas linear in sqrt space; returns alphas_cumprod (T,) float32."""
    betas = torch.linspace(beta_start ** 0.5, beta_end ** 0.5, num_train_timesteps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0).float()


def ddim_skip_grid(num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50) -> torch.Tensor:
    """The N skipping-step DDIM timesteps, ascending: (1..N) * (T // N) - 1, int64 (N,)."""
    step = num_train_timesteps // num_ddim_timesteps
    return torch.arange(1, num_ddim_timesteps + 1, dtype=torch.int64) * step - 1


def _gather(values: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[timesteps] shaped (B, 1, ..., 1) to broadcast against a (B, ...) tensor of `ndim` dims."""
    out = values.to(timesteps.device)[timesteps]
    return out.reshape(out.shape[0], *([1] * (ndim - 1)))


def alpha_sigma(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, ndim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(alpha_t, sigma_t), each (B, 1, ..., 1), for integer timesteps (B,)."""
    a = _gather(alphas_cumprod, timesteps, ndim)
    return a.sqrt(), (1 - a).sqrt()


def predicted_x0(model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor,
                 alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """x_0 implied by a network output at z_t = `sample` (B,C,H,W) for epsilon, v or sample prediction."""
    alpha, sigma = alpha_sigma(alphas_cumprod, timesteps, sample.ndim)
    if prediction_type == "epsilon":
        return (sample - sigma * model_output) / alpha
    if prediction_type == "v_prediction":
        return alpha * sample - sigma * model_output
    if prediction_type == "sample":
        return model_output
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def predicted_noise(model_output: torch.Tensor, timesteps: torch.Tensor, sample: torch.Tensor,
                    alphas_cumprod: torch.Tensor, prediction_type: str = "epsilon") -> torch.Tensor:
    """eps implied by a network output at z_t = `sample` (B,C,H,W) for epsilon, v or sample prediction."""
    alpha, sigma = alpha_sigma(alphas_cumprod, timesteps, sample.ndim)
    if prediction_type == "epsilon":
        return model_output
    if prediction_type == "v_prediction":
        return alpha * model_output + sigma * sample
    if prediction_type == "sample":
        return (sample - alpha * model_output) / sigma
    raise ValueError(f"unknown prediction_type {prediction_type!r}")


def ddim_solver_step(x0: torch.Tensor, eps: torch.Tensor, prev_timesteps: torch.Tensor,
                     alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Deterministic DDIM step to `prev_timesteps` (B,) given the x0 and eps estimates (B,C,H,W).

    A negative previous timestep means "before the first grid point" and uses alphas_cumprod[0], as the LCD
    scripts' DDIMSolver and DDIMScheduler(set_alpha_to_one=False) do.
    """
    a_prev = _gather(alphas_cumprod, prev_timesteps.clamp_min(0), x0.ndim)
    return a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps


def boundary_scalings(timesteps: torch.Tensor, sigma_data: float = SIGMA_DATA,
                      timestep_scaling: float = TIMESTEP_SCALING) -> tuple[torch.Tensor, torch.Tensor]:
    """(c_skip, c_out) (B,) of the consistency parameterisation f = c_skip z_t + c_out x0_hat (LCMScheduler's)."""
    t = timesteps.float() * timestep_scaling
    c_skip = sigma_data ** 2 / (t ** 2 + sigma_data ** 2)
    c_out = t / (t ** 2 + sigma_data ** 2) ** 0.5
    return c_skip, c_out


def guidance_scale_embedding(w: torch.Tensor, embedding_dim: int = 256, dtype: torch.dtype = torch.float32
                             ) -> torch.Tensor:
    """Sinusoidal embedding (B, embedding_dim) of guidance w (B,), LCM convention, scaled by 1000."""
    w = w.float() * 1000.0
    half = embedding_dim // 2
    freqs = torch.exp(torch.arange(half, dtype=dtype, device=w.device) * -(math.log(10000.0) / (half - 1)))
    emb = w.to(dtype)[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(emb), torch.cos(emb)], dim=1)
    if embedding_dim % 2 == 1:
        emb = torch.nn.functional.pad(emb, (0, 1))
    return emb


EDGE_ROUNDINGS = ("floor", "round")


def segment_edges(num_segments: int, num_ddim_timesteps: int = 50, rounding: str = "floor") -> torch.Tensor:
    """Segment edges of multistep consistency (MLCM) as positions on the skipping-step grid, ascending (S+1,) int64.

    Position p in 0..N names timestep `grid_timestep(p)`: p = 0 is the clean end, p = N the top grid point (999).
    Edge i is i N / S rounded down ("floor", as phased consistency distillation's `ddim_style_multiphase_pred`:
    S = 4, N = 50: 0, 12, 25, 37, 50) or to the nearest, half to even ("round", this package's first MLCM, which
    the shipped emoji-64 `mlcm` was trained with: 0, 12, 25, 38, 50).
    """
    if not 1 <= num_segments <= num_ddim_timesteps:
        raise ValueError(f"segments must be between 1 and {num_ddim_timesteps}, got {num_segments}")
    if rounding not in EDGE_ROUNDINGS:
        raise ValueError(f"unknown edge rounding {rounding!r}: use {' or '.join(EDGE_ROUNDINGS)}")
    edges = torch.arange(num_segments + 1, dtype=torch.float64) * num_ddim_timesteps / num_segments
    return (edges.floor() if rounding == "floor" else edges.round()).to(torch.int64)


def grid_timestep(positions: torch.Tensor, num_train_timesteps: int = 1000, num_ddim_timesteps: int = 50
                  ) -> torch.Tensor:
    """Timesteps of skipping-step grid positions (any shape): p * k - 1, with position 0 (clean end) at timestep 0."""
    return (positions * (num_train_timesteps // num_ddim_timesteps) - 1).clamp_min(0)


def lower_edge(positions: torch.Tensor, edges: torch.Tensor) -> torch.Tensor:
    """For grid positions p >= 1 (B,), the segment edge just below: the largest edge e < p, (B,) int64."""
    return edges[torch.searchsorted(edges.to(positions.device), positions, right=False) - 1]


# ---------------------------------------------------------------------------------------------------------------
# Consistency models in sigma parameterisation (iCT, Song & Dhariwal 2023): x_sigma = x_0 + sigma z, sigma in
# [sigma_min, sigma_max] on the Karras grid; the network sees c_in x_sigma and c_noise(sigma).

SIGMA_MIN = 0.002
SIGMA_MAX = 80.0
KARRAS_RHO = 7.0


def karras_sigmas(n: int, sigma_min: float = SIGMA_MIN, sigma_max: float = SIGMA_MAX, rho: float = KARRAS_RHO
                  ) -> torch.Tensor:
    """The n-point Karras grid, ascending, float64 (n,), n >= 2:
    sigma_i = (sigma_min^(1/rho) + (i-1)/(n-1) (sigma_max^(1/rho) - sigma_min^(1/rho)))^rho for i = 1..n,
    with the endpoints exactly sigma_min and sigma_max (so f(x, sigma_1) = x holds bit for bit)."""
    if n < 2:
        raise ValueError(f"a Karras grid needs at least 2 points, got {n}")
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (lo + torch.linspace(0, 1, n, dtype=torch.float64) * (hi - lo)) ** rho
    sigmas[0], sigmas[-1] = sigma_min, sigma_max
    return sigmas


def cm_scalings(sigma: torch.Tensor, sigma_min: float = SIGMA_MIN, sigma_data: float = SIGMA_DATA
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(c_skip, c_out, c_in) of sigma (any shape) for f = c_skip x + c_out F(c_in x, c_noise), keeping the sigma_min
    offset so that c_skip = 1 and c_out = 0 at sigma_min:
    c_skip = sd^2 / ((s - s_min)^2 + sd^2), c_out = (s - s_min) sd / sqrt(s^2 + sd^2), c_in = 1 / sqrt(s^2 + sd^2)."""
    c_skip = sigma_data ** 2 / ((sigma - sigma_min) ** 2 + sigma_data ** 2)
    c_out = (sigma - sigma_min) * sigma_data / (sigma ** 2 + sigma_data ** 2).sqrt()
    c_in = 1 / (sigma ** 2 + sigma_data ** 2).sqrt()
    return c_skip, c_out, c_in


def cm_timestep(sigma: torch.Tensor) -> torch.Tensor:
    """c_noise(sigma) = 1000 * 0.25 * log(sigma + 1e-44), the value a diffusers UNet gets as its (float) timestep
    (openai/consistency_models and diffusers' CMStochasticIterativeScheduler; about -1554 at 0.002, 1095 at 80)."""
    return 250.0 * torch.log(sigma + 1e-44)


def ict_num_scales(step: int, total_steps: int, s0: int = 10, s1: int = 1280) -> int:
    """The iCT doubling curriculum: grid points N(k) = min(s0 2^floor(k / K'), s1) + 1 at optimiser step k of K,
    K' = floor(K / (log2(floor(s1 / s0)) + 1)) (K = 400k, s0 = 10, s1 = 1280: 11, 21, ..., 1281 every 50k steps).
    A function of the global step only, so every process of a multi-GPU run uses the same N."""
    k_prime = max(math.floor(total_steps / (math.log2(math.floor(s1 / s0)) + 1)), 1)
    return min(s0 * 2 ** (step // k_prime), s1) + 1


def lognormal_interval_probs(sigmas: torch.Tensor, p_mean: float = -1.1, p_std: float = 2.0) -> torch.Tensor:
    """Probabilities (N-1,) float64 of the N-1 intervals of an ascending grid `sigmas` (N,) under log sigma ~
    N(p_mean, p_std^2), renormalised over [sigma_1, sigma_N]:
    p_i ∝ erf((log s_{i+1} - p_mean) / (sqrt(2) p_std)) - erf((log s_i - p_mean) / (sqrt(2) p_std))."""
    cdf = torch.erf((sigmas.double().log() - p_mean) / (math.sqrt(2) * p_std))
    p = cdf[1:] - cdf[:-1]
    return p / p.sum()
