"""The method registry: what each method declares, what is derived from it, and that nothing else chooses by a
method's name; `RGLCDLoss` alone (expert reward, on-policy states, proxy)."""

import inspect
import re
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, LCMScheduler

from rglcd.methods import METHODS, Trainer, demo_members, get_method, member_titles, trainer_methods
from rglcd.samplers import SAMPLERS, sampler_class
from rglcd.objectives import DistillBatch, LCDLoss, OnPolicyStates, RewardGuidance, RGLCDLoss
from rglcd.scheduling_cm import CMScheduler
from rglcd.scheduling_mlcm import MLCMScheduler
from rglcd.training.distill import train_distill
from rglcd.training.trainers import TRAINERS, trainer_for
from tests.test_objectives import fake_net

ROOT = Path(__file__).resolve().parents[1]


def test_registry_declares_each_method():
    assert list(METHODS) == ["lcd", "rg-lcd", "mlcm", "tcd", "ict"]
    assert {m.kind for m in METHODS.values()} <= set(SAMPLERS)
    assert sampler_class("lcm") is LCMScheduler and sampler_class("mlcm") is MLCMScheduler
    assert sampler_class("cm") is CMScheduler and sampler_class("tcd").__name__ == "TCDGammaScheduler"
    assert trainer_methods(Trainer.DISTILL) == ("lcd", "rg-lcd", "mlcm", "tcd")
    assert trainer_methods(Trainer.ICT) == ("ict",)
    assert demo_members() == ("lcm", "rg-lcm", "mlcm")
    assert member_titles()["lcm-lora"] == "LCM-LoRA" and member_titles()["rg-lcm"] == "RG-LCM"
    assert [get_method(n).uses_reward(False) for n in ("lcd", "rg-lcd", "mlcm")] == [False, True, False]
    assert get_method("mlcm").uses_reward(True) and not get_method("lcd").uses_reward(True)
    assert all(m.recipe is None or (ROOT / m.recipe).is_file() for m in METHODS.values())
    assert set(TRAINERS) == {m.trainer for m in METHODS.values()}
    with pytest.raises(ValueError, match="unknown method 'pcm'; this version implements: lcd, rg-lcd, mlcm, tcd, ict"):
        get_method("pcm")
    with pytest.raises(ValueError, match="unknown student kind"):
        sampler_class("teacher")
    with pytest.raises(SystemExit):
        trainer_for("pcm")


def test_no_method_name_compares_outside_the_registry():
    pattern = re.compile(r"method\s*(==|!=)\s*['\"]|method\s+(not\s+)?in\s*\(\s*['\"]")
    offenders = []
    for path in [*ROOT.glob("rglcd/**/*.py"), *ROOT.glob("train/*.py"), ROOT / "app.py"]:
        if path.name == "methods.py":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert not offenders


def test_train_distill_is_wiring():
    assert len(inspect.getsource(train_distill).splitlines()) <= 80


class _Reward(torch.nn.Module):
    """A differentiable stand-in expert: the mean brightness of the image, per sample."""

    def forward(self, images: torch.Tensor, prompts: list[str]) -> torch.Tensor:
        return images.mean((1, 2, 3)) * torch.tensor([len(p) for p in prompts], dtype=images.dtype)


class _Decoder(torch.nn.Module):
    config = type("Config", (), {"scaling_factor": 0.5})

    def decode(self, z: torch.Tensor):
        return type("Out", (), {"sample": torch.tanh(z[:, :3])})


def _batch(n: int = 4, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    loss = LCDLoss(DDPMScheduler().alphas_cumprod, w_min=2.0, w_max=8.0, w_embedding_dim=16)
    draw = loss.draw(n, g)
    z0, ctx = torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 5, 16, generator=g)
    batch = DistillBatch(z0, torch.randn(z0.shape, generator=g), ctx, torch.zeros_like(ctx), draw,
                         texts=["a", "bb", "ccc", "dddd"][:n], generator=g)
    return loss, batch


def test_rg_lcd_loss_is_the_distillation_loss_minus_beta_times_the_expert_reward():
    loss, batch = _batch()
    guidance = RewardGuidance(_Reward(), _Decoder())
    weight = torch.nn.Parameter(torch.tensor(0.3))
    student = lambda z, t, c, w: weight * z  # noqa: E731
    teacher, target = fake_net(0.5), fake_net(0.4)
    distill, aux = loss.batch_loss(student, teacher, target, batch)
    total, rg_aux = RGLCDLoss(loss, guidance, 0.25).batch_loss(student, teacher, target, batch)
    expected_reward = guidance(aux["student_x0"], batch.texts)
    assert torch.allclose(rg_aux["reward"], expected_reward) and expected_reward.abs().min() > 1e-4
    assert torch.allclose(total, distill - 0.25 * expected_reward)
    (grad,) = torch.autograd.grad(total.mean(), weight)
    (distill_grad,) = torch.autograd.grad(distill.mean(), weight)
    assert not torch.allclose(grad, distill_grad), "the reward term must reach the student"
    with pytest.raises(ValueError, match="proxy reward needs both"):
        RGLCDLoss(loss, guidance, proxy=torch.nn.Linear(1, 1))


def test_rg_lcd_on_policy_states_score_the_students_sampler_state():
    loss, batch = _batch()
    scheduler = LCMScheduler.from_config(DDPMScheduler().config)
    states = OnPolicyStates(scheduler, 3, (4, 8, 8), loss.alphas_cumprod, 16)
    student, teacher, target = fake_net(0.3), fake_net(0.5), fake_net(0.4)
    g_state = batch.generator.get_state()
    _, aux = RGLCDLoss(loss, RewardGuidance(_Reward(), _Decoder()), 1.0, states).batch_loss(
        student, teacher, target, batch)
    _, data_aux = loss.batch_loss(student, teacher, target, batch)
    assert not torch.allclose(aux["reward"], RewardGuidance(_Reward(), _Decoder())(data_aux["student_x0"], batch.texts))
    batch.generator.set_state(g_state)  # the same draws again: the same sampler state and x0
    x0 = states(student, batch.context, batch.draw["w"], batch.generator)
    assert torch.allclose(aux["reward"], RewardGuidance(_Reward(), _Decoder())(x0, batch.texts))
