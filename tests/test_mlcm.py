"""MLCM: segment edges, the segment objective (one segment is LCD), the scheduler and the trajectory cache."""

import pytest
import torch
from diffusers import DDPMScheduler

from rglcd.consistency import consistency_output, segment_output
from rglcd.objectives import LCDLoss, MLCMLoss
from rglcd.schedule import grid_timestep, lower_edge, segment_edges
from rglcd.scheduling_mlcm import MLCMScheduler
from tests.test_objectives import fake_net

SCHED = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def batch(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, 4, 8, 8, generator=g), torch.randn(n, 6, 16, generator=g), torch.zeros(n, 6, 16),
            torch.randn(n, 4, 8, 8, generator=g), g)


def test_segment_edges_and_lower_edge():
    assert segment_edges(1).tolist() == [0, 50]
    assert segment_edges(2).tolist() == [0, 25, 50]
    assert segment_edges(8).tolist() == [0, 6, 12, 18, 25, 31, 37, 43, 50]  # floor, as PCM
    assert segment_edges(8, rounding="round").tolist() == [0, 6, 12, 19, 25, 31, 38, 44, 50]
    assert segment_edges(4).tolist() == [0, 12, 25, 37, 50]
    edges = segment_edges(4, rounding="round")  # 0, 12, 25, 38, 50
    assert lower_edge(torch.tensor([1, 12, 13, 25, 26, 50]), edges).tolist() == [0, 0, 12, 12, 25, 38]
    assert grid_timestep(torch.tensor([0, 1, 25, 50])).tolist() == [0, 19, 499, 999]
    with pytest.raises(ValueError):
        segment_edges(51)
    with pytest.raises(ValueError):
        segment_edges(4, rounding="ceil")


def test_one_segment_is_lcd():
    """With the first MLCM's settings (round edges, LCD boundary scalings at the clean end)."""
    latents, ctx, uctx, noise, g = batch()
    lcd = LCDLoss(SCHED.alphas_cumprod)
    mlcm = MLCMLoss(SCHED.alphas_cumprod, num_segments=1, edge_rounding="round", clean_end="lcm")
    draw = lcd.draw(6, g)
    draw["index"][0], draw["start"][0], draw["end"][0] = 0, 19, 0
    nets = fake_net(0.3), fake_net(0.5), fake_net(0.4)
    a, aux_a = lcd(*nets, latents, ctx, uctx, noise, draw)
    b, aux_b = mlcm(*nets, latents, ctx, uctx, noise, draw)
    assert torch.equal(a, b) and torch.equal(aux_a["student_x0"], aux_b["student_x0"])
    mlcm.num_segments = 2
    c, _ = mlcm(*nets, latents, ctx, uctx, noise, draw)
    upper = draw["index"] + 1 > 25  # these samples map to the edge at 499, not to x0
    assert upper.any() and not torch.allclose(a[upper], c[upper]) and torch.allclose(a[~upper], c[~upper])


def test_segment_target_at_an_edge_is_the_teacher_state():
    """A start one grid step above an edge: the target network's output is z_{t_n} itself (the boundary)."""
    ac = SCHED.alphas_cumprod
    z = torch.randn(3, 4, 8, 8)
    t = torch.tensor([499, 239, 759])
    out = fake_net(0.7)(z, t, torch.zeros(3, 2, 4), None)
    assert torch.allclose(segment_output(out, z, t, t, ac), z, atol=1e-5)
    zero = torch.zeros_like(t)
    assert torch.allclose(segment_output(out, z, t, zero, ac, clean_end="lcm"), consistency_output(out, z, t, ac))
    x0 = (z - (1 - ac[t]).sqrt().view(-1, 1, 1, 1) * out) / ac[t].sqrt().view(-1, 1, 1, 1)
    ddim = ac[0].sqrt() * x0 + (1 - ac[0]).sqrt() * out
    assert torch.allclose(segment_output(out, z, t, zero, ac), ddim, atol=1e-5)


def test_loss_with_trajectory_states_skips_the_teacher():
    latents, ctx, uctx, noise, g = batch()
    loss_fn = MLCMLoss(SCHED.alphas_cumprod, num_segments=4)
    draw = loss_fn.draw(6, g)

    def teacher(*args):
        raise AssertionError("the teacher must not run on trajectory states")

    z_start = torch.randn(6, 4, 8, 8, generator=g)
    z_end = loss_fn.teacher_step(fake_net(0.5), z_start, draw["start"], ctx, uctx, draw["w"])
    a, _ = loss_fn(fake_net(0.3), teacher, fake_net(0.4), None, ctx, uctx, None, draw, (z_start, z_end))
    # the same pair reached by noising: choose latents/noise so that z_start is reproduced exactly
    alpha = SCHED.alphas_cumprod[draw["start"]].sqrt().view(-1, 1, 1, 1)
    sigma = (1 - SCHED.alphas_cumprod[draw["start"]]).sqrt().view(-1, 1, 1, 1)
    b, _ = loss_fn(fake_net(0.3), fake_net(0.5), fake_net(0.4), (z_start - sigma * noise) / alpha, ctx, uctx, noise,
                   draw)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("steps,expected", [(1, [999]), (2, [999, 499]), (3, [999, 659, 339]),
                                            (4, [999, 759, 499, 239]), (6, [999, 839, 659, 499, 339, 159]),
                                            (8, [999, 879, 759, 619, 499, 379, 239, 119])])
def test_scheduler_timesteps(steps, expected):
    s = MLCMScheduler()  # the defaults: round edges, as the shipped emoji-64 mlcm was trained
    s.set_timesteps(steps)
    assert s.timesteps.tolist() == expected


@pytest.mark.parametrize("sampler,edges,steps,expected", [
    ("deterministic", "floor", 4, [999, 739, 499, 239]), ("deterministic", "floor", 8, [999, 859, 739, 619, 499,
                                                                                         359, 239, 119]),
    ("tlcm", "round", 4, [999, 749, 499, 124]), ("tlcm", "round", 2, [999, 499]),
    ("tlcm", "round", 8, [999, 874, 749, 624, 499, 374, 249, 124])])
def test_scheduler_timesteps_floor_edges_and_tlcm(sampler, edges, steps, expected):
    s = MLCMScheduler(edge_rounding=edges, sampler=sampler)
    s.set_timesteps(steps)
    assert s.timesteps.tolist() == expected


def test_scheduler_round_trip_and_steps(tmp_path):
    s = MLCMScheduler(prediction_type="v_prediction", original_inference_steps=25)
    s.save_pretrained(tmp_path)
    r = MLCMScheduler.from_pretrained(tmp_path)
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(r.config) == public(s.config) and public(s.config)["original_inference_steps"] == 25
    assert torch.allclose(r.alphas_cumprod, SCHED.alphas_cumprod.float(), rtol=1e-5)
    r.set_timesteps(2)
    assert r.timesteps.tolist() == [999, 479]  # 25-point grid, k = 40
    with pytest.raises(ValueError):
        r.set_timesteps(26)
    # stepping: segment jumps with the model's own estimates; the last step returns the clean estimate
    s = MLCMScheduler()
    s.set_timesteps(2)
    z = torch.randn(2, 4, 8, 8)
    eps = torch.randn_like(z)
    prev, x0 = s.step(eps, 999, z, return_dict=False)
    ac = SCHED.alphas_cumprod
    x0_ref = (z - (1 - ac[999]).sqrt() * eps) / ac[999].sqrt()
    assert torch.allclose(prev, ac[499].sqrt() * x0_ref + (1 - ac[499]).sqrt() * eps, atol=1e-4)
    last, clean = s.step(eps, 499, prev, return_dict=False)
    assert torch.equal(last, clean)


def test_scheduler_in_diffusers_pipelines(family_with_teacher):
    from rglcd.models import load_family
    from rglcd.training.step import student_from_teacher

    family = load_family(str(family_with_teacher))
    unet = student_from_teacher(family.unet("teacher"), 256)
    pipe = family.pipeline("teacher", unet=unet, kind="mlcm")
    assert type(pipe).__name__ == "LatentConsistencyModelPipeline" and isinstance(pipe.scheduler, MLCMScheduler)
    calls = []
    pipe.unet.register_forward_hook(lambda *a: calls.append(1))
    for steps in (2, 3):
        images = pipe(["a cat"], num_inference_steps=steps, guidance_scale=3, output_type="pt").images
        assert images.shape[0] == 1 and torch.isfinite(images).all()
    assert len(calls) == 5
    sd = family.pipeline("teacher", kind="mlcm")  # no guidance embedding: the LoRA-student path
    assert type(sd).__name__ == "StableDiffusionPipeline" and isinstance(sd.scheduler, MLCMScheduler)
    assert sd(["a cat"], num_inference_steps=2, guidance_scale=1, output_type="pt").images.shape[0] == 1


def test_mlcm_trains_on_trajectories_resumes_and_exports(family_with_teacher, tmp_path, monkeypatch):
    import rglcd.data.trajectories as traj
    from rglcd.data.emoji import cache_dir
    from rglcd.models import load_family
    from rglcd.sampling import Request, generate
    from rglcd.methods import MLCM, ObjectiveParts
    from rglcd.training.distill import DistillConfig, train_distill

    root = family_with_teacher
    written = []
    real = traj.sample_trajectories
    monkeypatch.setattr(traj, "sample_trajectories", lambda *a: written.append(1) or real(*a))

    def cfg(out, **kw):
        base = dict(method="mlcm", family=str(root), output_dir=str(tmp_path / out), member="mlcm",
                    export_dir=str(root / "mlcm"), batch_size=4, max_steps=6, warmup_steps=1, checkpoint_every=2,
                    eval_every=6, eval_steps=2, limit_concepts=16, progressive=(4, 2, 1), trajectory_data=6,
                    trajectory_batch=4)
        return DistillConfig.of(**(base | kw))

    loss = MLCM.build(MLCM.settings_of(cfg("x")), ObjectiveParts({"alphas_cumprod": SCHED.alphas_cumprod}, 6))
    assert [loss.at_step(s)["segments"] for s in range(6)] == [4, 4, 2, 2, 1, 1]
    full = train_distill(cfg("full", export_dir=str(tmp_path / "full-export")))
    assert len(written) == 2  # 6 trajectories in batches of 4
    assert len(list((cache_dir() / "trajectories").glob("*/*/shard-*.pt"))) == 1
    cut = train_distill(cfg("cut", stop_at=3))
    assert cut["segments"] == 2
    resumed = train_distill(cfg("cut"))
    assert len(written) == 2, "the trajectory set is written once and reused"
    assert resumed["loss"] == full["loss"] and resumed["segments"] == 1
    family = load_family(str(root))
    assert family.member("mlcm") == {"unet": "mlcm", "kind": "mlcm",
                                     "scheduler": {"edge_rounding": "floor", "clean_end": "ddim"}}
    sampler = family.pipeline("mlcm").scheduler.config
    assert (sampler.edge_rounding, sampler.clean_end, sampler.sampler) == ("floor", "ddim", "deterministic")
    for steps in (2, 3):
        assert generate(family, "mlcm", Request("red apple", steps=steps, guidance_scale=3)).shape == (1, 3, 64, 64)


def test_mlcm_with_the_preference_term(family_with_teacher, tmp_path):
    from rglcd.training.distill import DistillConfig, train_distill

    cfg = DistillConfig.of(method="mlcm", family=str(family_with_teacher), output_dir=str(tmp_path / "r"), export_dir=None,
                        batch_size=4, max_steps=2, warmup_steps=1, eval_every=0, limit_concepts=16, segments=2,
                        reward="family", reward_scale=0.5)
    metrics = train_distill(cfg)
    assert "reward" in metrics and metrics["segments"] == 2
