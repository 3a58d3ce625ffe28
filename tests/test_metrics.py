"""rglcd.metrics on tiny inputs against hand-computed values."""

import math

import pytest
import torch

from rglcd.metrics import (FrechetReference, PooledFeatures, bootstrap_ci, feature_statistics, frechet_distance,
                           normal_ci, pairwise_wins, trace_sqrt_product, z_value)


def test_frechet_distance_of_known_gaussians():
    # 1-d: N(0, 1) vs N(3, 4): (0-3)^2 + (1 - 2)^2 = 10.
    assert frechet_distance(torch.zeros(1), torch.eye(1), torch.tensor([3.0]), 4 * torch.eye(1)) == pytest.approx(10)
    # commuting (diagonal): |(1,2)|^2 + (1-2)^2 + (2-3)^2 = 5 + 1 + 1 = 7.
    fd = frechet_distance(torch.zeros(2), torch.diag(torch.tensor([1.0, 4.0])), torch.tensor([1.0, 2.0]),
                          torch.diag(torch.tensor([4.0, 9.0])))
    assert fd == pytest.approx(7)
    # non-diagonal: S1 = [[2,1],[1,2]] (eigenvalues 3, 1), S2 = I: tr S1 + tr I - 2 tr S1^(1/2) = 6 - 2(sqrt 3 + 1).
    s1 = torch.tensor([[2.0, 1.0], [1.0, 2.0]])
    assert trace_sqrt_product(s1, torch.eye(2)) == pytest.approx(math.sqrt(3) + 1)
    assert frechet_distance(torch.zeros(2), s1, torch.zeros(2), torch.eye(2)) == pytest.approx(4 - 2 * math.sqrt(3))
    assert frechet_distance(torch.ones(2), s1, torch.ones(2), s1) == pytest.approx(0, abs=1e-9)


def test_feature_statistics_by_hand():
    x = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 2.0], [2.0, 2.0]])  # deviations +-1, independent
    mu, sigma = feature_statistics(x)
    assert torch.allclose(mu, torch.tensor([1.0, 1.0], dtype=torch.float64))
    assert torch.allclose(sigma, torch.eye(2, dtype=torch.float64) * 4 / 3)
    with pytest.raises(ValueError, match="N>=2"):
        feature_statistics(torch.zeros(1, 3))


@pytest.mark.parametrize("n_ref, n_gen, dim", [(6, 5, 8), (40, 30, 4)])
def test_frechet_reference_matches_the_direct_formula(n_ref, n_gen, dim):
    g = torch.Generator().manual_seed(0)
    ref = torch.randn(n_ref, dim, generator=g) @ torch.randn(dim, dim, generator=g)
    gen = torch.randn(n_gen, dim, generator=g) + 0.5
    direct = frechet_distance(*feature_statistics(gen), *feature_statistics(ref))
    assert FrechetReference.from_features(ref).distance(gen) == pytest.approx(direct, rel=1e-8)
    assert FrechetReference.from_features(ref).distance(ref) == pytest.approx(0, abs=1e-8)


def test_pairwise_wins_ties_do_not_count():
    wins = pairwise_wins(torch.tensor([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [5.0, 5.0, 1.0]]))
    assert wins["win"].tolist() == [0.5, 1.0, 0.0]
    assert wins["top1"].tolist() == [0.0, 1.0, 0.0]
    assert wins["own"].tolist() == [1.0, 2.0, 1.0]


def test_confidence_intervals_on_known_samples():
    assert z_value(0.95) == pytest.approx(1.959964, abs=1e-6)
    mean, half = normal_ci(torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0]))  # sd = sqrt(2.5), se = sqrt(0.5)
    assert mean == pytest.approx(3) and half == pytest.approx(1.959964 * math.sqrt(0.5), rel=1e-6)
    assert math.isnan(normal_ci(torch.tensor([2.0]))[1])
    x = torch.tensor([1.0] * 30 + [0.0] * 70)  # bootstrap sd of the mean -> sqrt(0.3 * 0.7 / 100) = 0.0458
    estimate, boot_half = bootstrap_ci(lambda idx: x[idx].mean().item(), len(x), num=2000)
    assert estimate == pytest.approx(0.3)
    assert boot_half == pytest.approx(1.959964 * math.sqrt(0.21 / 100), rel=0.1)


def test_pooled_features_average_the_last_feature_map():
    class Backbone(torch.nn.Module):
        def extract_features(self, x):
            return x * 2

    feats = PooledFeatures(Backbone(), lambda images, size: images[..., :size, :size], image_size=2)
    images = torch.arange(2 * 3 * 3 * 3, dtype=torch.float32).view(2, 3, 3, 3)
    # image 0, channel 0: 2 x mean of [[0, 1], [3, 4]] = 4.
    out = feats(images)
    assert out.shape == (2, 3) and out[0, 0].item() == pytest.approx(4.0)


def test_high_frequency_energy_of_known_patterns():
    from rglcd.metrics import high_frequency_energy

    h = w = 16
    yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    checker = ((xx + yy) % 2).float().expand(1, 3, h, w)  # all energy at (0.5, 0.5): radius 0.707
    slow = (0.5 + 0.5 * torch.cos(2 * torch.pi * xx / 16)).float().expand(1, 3, h, w)  # radius 1/16
    mix = 0.5 * checker + 0.5 * slow
    e = high_frequency_energy(torch.cat([checker, slow, mix]), cutoff=0.25)
    assert torch.allclose(e[:2], torch.tensor([1.0, 0.0]), atol=1e-6)
    # mix: checker part +-0.25 -> power (0.25 HW)^2 at one frequency; cosine part 0.25 cos -> (0.125 HW)^2 at two
    assert torch.allclose(e[2], torch.tensor(0.0625 / (0.0625 + 2 * 0.015625)), atol=1e-6)
