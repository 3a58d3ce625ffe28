"""Evaluation math as pure functions of tensors: Frechet distance, pairwise prompt-following wins, confidence
intervals, and a pooled-feature extractor around a frozen backbone (the backbone is passed in; nothing here reads
files or downloads weights).

Frechet distance (FD) between Gaussians fitted to two feature sets:
    FD = |mu_1 - mu_2|^2 + tr(S_1) + tr(S_2) - 2 tr((S_1 S_2)^(1/2)).
Computed in the feature space of whatever network `PooledFeatures` wraps; with Inception-v3 pool3 features this is
FID, with other backbones it is not, and results name the backbone (e.g. "FD-EffNetLite0").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from statistics import NormalDist

import torch
from torch import nn


def feature_statistics(features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,D) features -> mean (D,) and unbiased covariance (D,D) in float64 (numpy.cov(rowvar=False), ddof 1)."""
    x = features.double()
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"need (N>=2, D) features, got shape {tuple(features.shape)}")
    mu = x.mean(0)
    xc = x - mu
    return mu, xc.T @ xc / (x.shape[0] - 1)


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped to 0)."""
    vals, vecs = torch.linalg.eigh(sigma)
    return (vecs * vals.clamp_min(0).sqrt()) @ vecs.T


def trace_sqrt_product(sigma1: torch.Tensor, sigma2: torch.Tensor) -> float:
    """tr((S_1 S_2)^(1/2)) for PSD (D,D) matrices: the eigenvalues of S_1 S_2 equal those of the symmetric PSD
    S_1^(1/2) S_2 S_1^(1/2), so the trace is the sum of their square roots (no non-symmetric sqrtm needed)."""
    root = _psd_sqrt(sigma1.double())
    return torch.linalg.eigvalsh(root @ sigma2.double() @ root).clamp_min(0).sqrt().sum().item()


def frechet_distance(mu1: torch.Tensor, sigma1: torch.Tensor, mu2: torch.Tensor, sigma2: torch.Tensor) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2); means (D,), covariances (D,D); >= 0."""
    diff = (mu1.double() - mu2.double()).square().sum().item()
    trace = sigma1.double().trace().item() + sigma2.double().trace().item()
    return max(diff + trace - 2 * trace_sqrt_product(sigma1, sigma2), 0.0)


@dataclass
class FrechetReference:
    """A fixed reference feature set prepared for many Frechet distances to it (e.g. bootstrap resamples).

    With a factor F (D,k) of the reference covariance, S_r = F F^T, and the generated features centred as X (N,D),
    the eigenvalues of S_r S_g equal those of F^T S_g F = (X F)^T (X F) / (N-1), so
    tr((S_r S_g)^(1/2)) = nuclear norm of X F / sqrt(N-1): no (D,D) matrix of the generated set is formed.
    F is the centred reference features transposed / sqrt(M-1) when M <= D, else S_r^(1/2).
    """

    mu: torch.Tensor
    factor: torch.Tensor
    trace: float

    @classmethod
    def from_features(cls, features: torch.Tensor) -> "FrechetReference":
        """Reference features (M,D), M >= 2."""
        x = features.double()
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"need (M>=2, D) reference features, got shape {tuple(features.shape)}")
        m, d = x.shape
        mu = x.mean(0)
        xc = x - mu
        factor = xc.T / (m - 1) ** 0.5 if m <= d else _psd_sqrt(xc.T @ xc / (m - 1))
        return cls(mu, factor, xc.square().sum().item() / (m - 1))

    def distance(self, features: torch.Tensor) -> float:
        """Frechet distance of the Gaussian fitted to `features` (N>=2,D) to the reference; the same value as
        `frechet_distance(*feature_statistics(features), *feature_statistics(reference))`."""
        x = features.double()
        n = x.shape[0]
        if x.ndim != 2 or n < 2:
            raise ValueError(f"need (N>=2, D) features, got shape {tuple(features.shape)}")
        mu = x.mean(0)
        xc = x - mu
        trace_sqrt = torch.linalg.svdvals(xc @ self.factor).sum().item() / (n - 1) ** 0.5
        diff = (mu - self.mu).square().sum().item()
        return max(diff + xc.square().sum().item() / (n - 1) + self.trace - 2 * trace_sqrt, 0.0)


def pairwise_wins(scores: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-image prompt following from a score matrix (N images, N prompts), image i made for prompt i.

    Returns (N,) tensors: `win` = fraction of j != i with scores[i,i] > scores[i,j] (in [0,1]),
    `top1` = 1.0 where the own prompt beats every other prompt, else 0.0, `own` = scores[i,i].
    """
    n = scores.shape[0]
    if scores.shape != (n, n) or n < 2:
        raise ValueError(f"need a square score matrix of at least 2 prompts, got {tuple(scores.shape)}")
    own = scores.diagonal()
    win = (own.unsqueeze(1) > scores).sum(1).float() / (n - 1)
    return {"win": win, "top1": (win == 1).float(), "own": own}


def z_value(level: float = 0.95) -> float:
    """Two-sided standard normal quantile: 1.959964 for level 0.95."""
    return NormalDist().inv_cdf(0.5 + level / 2)


def normal_ci(values: torch.Tensor, level: float = 0.95) -> tuple[float, float]:
    """(mean, half-width) of the normal-approximation interval mean +- z * sd / sqrt(n) over (n,) values
    (sd with ddof 1); half-width is nan when n < 2."""
    x = values.double().flatten()
    n = x.numel()
    if n < 2:
        return (x.mean().item() if n else float("nan")), float("nan")
    return x.mean().item(), z_value(level) * x.std().item() / n ** 0.5


def bootstrap_ci(statistic: Callable[[torch.Tensor], float], n: int, num: int = 200, level: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """(estimate, half-width) of a normal bootstrap interval: `statistic(index)` on all n units, +- z times the
    standard deviation of `num` resamples drawn with replacement (index: (n,) int64 into the units)."""
    estimate = statistic(torch.arange(n))
    generator = torch.Generator().manual_seed(seed)
    reps = torch.tensor([statistic(torch.randint(n, (n,), generator=generator)) for _ in range(num)])
    return estimate, z_value(level) * reps.double().std().item()


class PooledFeatures(nn.Module):
    """Frozen backbone features for distribution metrics: images in [0,1] (B,3,H,W) -> (B,D), the backbone's last
    feature map average-pooled. `backbone.extract_features` takes ImageNet-normalised (B,3,S,S) inputs;
    `preprocess(images, image_size)` makes them (e.g. `rglcd.rewards.emoji.preprocess`)."""

    def __init__(self, backbone: nn.Module, preprocess: Callable[[torch.Tensor, int], torch.Tensor],
                 image_size: int = 224, name: str = "features") -> None:
        super().__init__()
        self.backbone = backbone.eval().requires_grad_(False)
        self.preprocess = preprocess
        self.image_size = image_size
        self.name = name

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.extract_features(self.preprocess(images, self.image_size)).mean((2, 3))


def high_frequency_energy(images: torch.Tensor, cutoff: float = 0.25) -> torch.Tensor:
    """Share (N,) of each image's spectral energy (mean over channels removed) at radial frequencies above
    `cutoff` cycles per pixel (Nyquist is 0.5): a reward-hacking symptom (high-frequency adversarial patterns).

    images: (N,C,H,W) in [0,1].
    """
    x = images.float() - images.float().mean((-2, -1), keepdim=True)
    power = torch.fft.fft2(x).abs().pow(2).sum(1)  # (N,H,W)
    fy = torch.fft.fftfreq(x.shape[-2]).view(-1, 1)
    fx = torch.fft.fftfreq(x.shape[-1]).view(1, -1)
    high = ((fx ** 2 + fy ** 2).sqrt() > cutoff).to(power)
    return (power * high).sum((-2, -1)) / power.sum((-2, -1)).clamp_min(1e-12)
