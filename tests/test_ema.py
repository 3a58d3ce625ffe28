"""The one EMA (rglcd.training.ema): diffusers EMAModel's decay schedules exactly, its averages to float rounding,
the foreach lerp of the distillation target, and checkpoint state (EMAModel's checkpoints read too)."""

import pytest
import torch
from diffusers.training_utils import EMAModel

from rglcd.training.ema import EMA, ema_decay, ema_update


def _params(seed: int = 0) -> list[torch.nn.Parameter]:
    g = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(shape, generator=g)) for shape in ((64, 32), (32,), (3, 3, 8, 8))]


def _train(params: list[torch.nn.Parameter], step: int) -> None:
    g = torch.Generator().manual_seed(100 + step)
    with torch.no_grad():
        for p in params:
            p.add_(torch.randn(p.shape, generator=g) * 0.01)


@pytest.mark.parametrize("warmup, options", [("ratio", {}), ("power", {"use_ema_warmup": True})])
@pytest.mark.parametrize("decay", [0.999, 0.95])
def test_decay_schedule_is_diffusers_emamodels(warmup, options, decay):
    reference = EMAModel(_params(), decay=decay, **options)
    assert [ema_decay(n, decay, warmup) for n in range(1, 3000)] == [reference.get_decay(n) for n in range(1, 3000)]
    assert ema_decay(1, decay, warmup) == 0.0 and ema_decay(5000, decay, "none") == decay


@pytest.mark.parametrize("warmup, options", [("ratio", {}), ("power", {"use_ema_warmup": True})])
def test_averages_match_emamodel_to_rounding_and_the_first_update_copies(warmup, options):
    params = _params()
    ours, reference = EMA(params, 0.99, warmup), EMAModel(params, decay=0.99, **options)
    for step in range(6):
        _train(params, step)
        ours.update(params)
        reference.step(params)
        if step == 0:
            assert all(torch.equal(s, p) for s, p in zip(ours.shadow, params))
        assert all(torch.allclose(a, b, rtol=1e-6, atol=1e-7) for a, b in zip(ours.shadow, reference.shadow_params))
    assert not torch.allclose(ours.shadow[0], params[0])  # still an average, not a copy
    fresh = [torch.nn.Parameter(torch.zeros_like(p)) for p in params]
    ours.copy_to(fresh)
    assert all(torch.equal(f, s) for f, s in zip(fresh, ours.shadow))


def test_ema_update_is_a_lerp_of_modules_in_place():
    target, online = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    before = [p.detach().clone() for p in target.parameters()]
    ema_update(target, online, 0.9)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        assert torch.allclose(t, 0.9 * b + 0.1 * o.detach(), atol=1e-7)


def test_state_resumes_exactly_and_reads_emamodel_checkpoints():
    params = _params()
    whole = EMA(params, 0.999, "power")
    cut = EMA(_params(1), 0.999, "power")
    shadows = cut.shadow
    for step in range(4):
        _train(params, step)
        whole.update(params)
        if step == 1:
            cut.load_state_dict(whole.state_dict())
        elif step > 1:
            cut.update(params)
    assert cut.shadow is shadows and cut.updates == 4  # loaded in place: the shadows keep their device
    assert all(torch.equal(a, b) for a, b in zip(whole.shadow, cut.shadow))
    old = EMAModel(params, decay=0.999, use_ema_warmup=True)
    old.step(params)
    restored = EMA(_params(2), 0.999, "power")
    restored.load_state_dict(old.state_dict())
    assert restored.updates == 1 and all(torch.equal(a, b) for a, b in zip(restored.shadow, old.shadow_params))
    with pytest.raises(ValueError, match="holds 3 tensors"):
        EMA(params[:2], 0.9).load_state_dict(whole.state_dict())
    with pytest.raises(ValueError, match="unknown EMA warm-up"):
        EMA(params, 0.9, "linear")
