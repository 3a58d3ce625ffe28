"""The consistency parameterisation: boundary condition, limits, and the distances."""

import pytest
import torch

from rglcd.consistency import consistency_distance, consistency_output, pseudo_huber
from rglcd.schedule import scaled_linear_alphas_cumprod


def test_boundary_condition_and_large_t_limit():
    ac = scaled_linear_alphas_cumprod()
    z, out = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    assert torch.equal(consistency_output(out, z, torch.tensor([0, 0]), ac), z)
    x0 = (z - (1 - ac[999]).sqrt() * out) / ac[999].sqrt()
    f = consistency_output(out, z, torch.tensor([999, 999]), ac)
    assert torch.allclose(f, x0, rtol=1e-3, atol=1e-3)


def test_distances():
    a, b = torch.zeros(3, 2, 2), torch.zeros(3, 2, 2)
    b[0] += 1.0
    l2 = consistency_distance(a, b, "l2")
    assert l2.tolist() == [1.0, 0.0, 0.0]
    hub = consistency_distance(a, b, "huber", huber_c=0.001)
    assert hub[0].item() == pytest.approx(1.0, abs=2e-3) and hub[1].item() == 0.0
    small = consistency_distance(a, b * 1e-3, "huber", huber_c=0.1)
    assert small[0].item() == pytest.approx(1e-6 / (2 * 0.1), rel=2e-2)
    assert pseudo_huber(a, b, 0.5)[0].item() == pytest.approx((4 + 0.25) ** 0.5 - 0.5)
    with pytest.raises(ValueError, match="unknown loss_type"):
        consistency_distance(a, b, "l1")
