"""The method registry: what each method declares, what is derived from it, and that nothing else chooses by a
method's name; `RGLCDLoss` alone (expert reward, on-policy states, proxy)."""

import inspect
import re
from pathlib import Path

import pytest
import torch
from diffusers import DDPMScheduler, LCMScheduler

from rglcd.methods import METHODS, Trainer, demo_members, get_method, member_titles, trainer_methods
from rglcd.objectives import DistillBatch, LCDLoss, OnPolicyStates, RewardGuidance, RGLCDLoss
from rglcd.samplers import SAMPLERS, sampler_class
from rglcd.scheduling_cm import CMScheduler
from rglcd.scheduling_mlcm import MLCMScheduler
from rglcd.training.distill import train_distill
from rglcd.training.trainers import TRAINERS, trainer_for
from tests.test_objectives import fake_net
from tests.test_samplers import compare_offenders, string_compares

ROOT = Path(__file__).resolve().parents[1]


def test_registry_declares_each_method():
    """What every method declares holds for every method (nothing here lists them by hand)."""
    import dataclasses

    import yaml

    from rglcd.methods import Method, method_help, method_sections
    from rglcd.training.settings import sections

    members = [m.member for m in METHODS.values()]
    assert len(set(members)) == len(members) and len(set(m.title for m in METHODS.values())) == len(members)
    for m in METHODS.values():
        assert m.kind in SAMPLERS and m.trainer in TRAINERS and m.summary and m.reward in ("none", "optional",
                                                                                              "required")
        assert yaml.safe_load((ROOT / m.recipe).read_text())["method"] == m.name
        assert f"{m.name}: {m.summary}" in method_help(m.trainer) and m.name in trainer_methods(m.trainer)
        config = {name: cls for name, cls, _ in sections(TRAINERS[m.trainer].config)[1:]}
        assert all(config.get(name) is cls for name, cls in m.sections), m.name  # its sections are in its config
        if m.reward != "none":
            assert {"rg", "proxy"} <= {name for name, _ in m.sections}, "a reward term reads the rg and proxy sections"
        assert m.member in demo_members() or not m.in_demo
        if m.trainer is Trainer.DISTILL:
            assert member_titles()[m.lora_member()] == m.lora_title()
    assert set(method_sections(Trainer.DISTILL)) == {n for m in METHODS.values() if m.trainer is Trainer.DISTILL
                                                     for n, _ in m.sections}
    source = "\n".join(p.read_text() for p in [*ROOT.glob("rglcd/**/*.py"), *ROOT.glob("train/*.py")])
    for f in dataclasses.fields(Method):  # no unread fields: each is read somewhere (self.x or m.x)
        assert re.search(rf"\.{f.name}\b(?!\s*=[^=])", source), f"Method.{f.name} is never read"
    assert [get_method(n).uses_reward(False) for n in ("lcd", "rg-lcd", "mlcm")] == [False, True, False]
    assert get_method("mlcm").uses_reward(True) and not get_method("lcd").uses_reward(True)
    assert sampler_class("lcm") is LCMScheduler and sampler_class("mlcm") is MLCMScheduler
    assert sampler_class("cm") is CMScheduler and sampler_class("tcd").__name__ == "TCDGammaScheduler"
    with pytest.raises(ValueError, match=f"unknown method 'pcm'; this version implements: {', '.join(METHODS)}"):
        get_method("pcm")
    with pytest.raises(ValueError, match="unknown member kind 'pcm'"):
        sampler_class("pcm")
    with pytest.raises(SystemExit):
        trainer_for("pcm")


def test_objectives_follow_one_protocol():
    """Every method's objective class draws (batch, generator, step), computes `batch_loss(student, teacher, target,
    batch)`, and has `at_step` and `side_networks`; the trainer's config and the objective share their defaults."""
    from rglcd.objectives import LCDLoss, Objective
    from rglcd.training.distill_config import LCDSettings

    for m in METHODS.values():
        cls = m.objective
        assert issubclass(cls, Objective), m.name
        assert list(inspect.signature(cls.draw).parameters) == ["self", "batch", "generator", "step"], m.name
        assert list(inspect.signature(cls.batch_loss).parameters) == ["self", "student", "teacher", "target",
                                                                      "batch"], m.name
    for f in ("w_min", "w_max", "w_embedding_dim", "num_ddim_timesteps", "loss_type", "huber_c"):
        assert getattr(LCDSettings(), f) == getattr(LCDLoss, f), f


def test_no_method_name_compares_outside_the_registry():
    pattern = re.compile(r"method\s*(==|!=)\s*['\"]|method\s+(not\s+)?in\s*\(\s*['\"]")
    offenders = []
    for path in [*ROOT.glob("rglcd/**/*.py"), *ROOT.glob("train/*.py"), ROOT / "app.py"]:
        if path.name == "methods.py":
            continue
        offenders += [f"{path.relative_to(ROOT)}:{i}" for i, line in enumerate(path.read_text().splitlines(), 1)
                      if pattern.search(line)]
    assert not offenders
    assert not compare_offenders(string_compares(list(METHODS)), ("methods.py", "samplers.py"))


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
