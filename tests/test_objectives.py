"""LCDLoss against a line-by-line re-statement of diffusers' train_lcd_distill_sd_wds.py step."""

import numpy as np
import torch
from diffusers import DDPMScheduler

from rglcd.objectives import LCDLoss


def fake_net(scale):
    def net(z, t, ctx, w_emb):
        out = scale * z + 1e-3 * t.float().view(-1, 1, 1, 1) + ctx.mean((1, 2)).view(-1, 1, 1, 1)
        return out if w_emb is None else out + 0.1 * w_emb.mean(1).view(-1, 1, 1, 1)
    return net


def reference_outputs(student, teacher, target, latents, ctx, uctx, noise, index, w, sched):
    """The diffusers script's LCD step, restated (DDIMSolver, scalings_for_boundary_conditions, guidance embedding):
    the online prediction `model_pred` and the target, each (B,C,H,W). RG-LCD's script has the same lines."""
    ac = sched.alphas_cumprod
    ddim_t = (np.arange(1, 51) * 20).round().astype(np.int64) - 1
    ac_prev = np.asarray([ac[0]] + ac[ddim_t[:-1]].tolist())
    start = torch.from_numpy(ddim_t)[index]
    t = torch.where(start - 20 < 0, torch.zeros_like(start), start - 20)

    def scal(ts):
        s = 10.0 * ts.float()
        return 0.25 / (s ** 2 + 0.25), s / (s ** 2 + 0.25) ** 0.5

    def x0_of(out, ts, z):
        a, s = ac[ts].sqrt().view(-1, 1, 1, 1), (1 - ac[ts]).sqrt().view(-1, 1, 1, 1)
        return (z - s * out) / a

    def emb(wv, d=256):
        wv = wv * 1000.0
        half = d // 2
        e = torch.exp(torch.arange(half) * -(torch.log(torch.tensor(10000.0)) / (half - 1)))
        e = wv[:, None] * e[None, :]
        return torch.cat([torch.sin(e), torch.cos(e)], dim=1)

    cs0, co0 = scal(start)
    cs, co = scal(t)
    z = sched.add_noise(latents, noise, start)
    we = emb(w)
    pred = cs0.view(-1, 1, 1, 1) * z + co0.view(-1, 1, 1, 1) * x0_of(student(z, start, ctx, we), start, z)
    c_out, u_out = teacher(z, start, ctx, None), teacher(z, start, uctx, None)
    x0 = x0_of(c_out, start, z) + w.view(-1, 1, 1, 1) * (x0_of(c_out, start, z) - x0_of(u_out, start, z))
    eps = c_out + w.view(-1, 1, 1, 1) * (c_out - u_out)
    a_prev = torch.from_numpy(ac_prev)[index].view(-1, 1, 1, 1).float()
    x_prev = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    tgt = cs.view(-1, 1, 1, 1) * x_prev + co.view(-1, 1, 1, 1) * x0_of(target(x_prev, t, ctx, we), t, x_prev)
    return pred, tgt


def reference_step(student, teacher, target, latents, ctx, uctx, noise, index, w, sched):
    """The reference's per-sample huber loss (its batch mean is the script's loss)."""
    pred, tgt = reference_outputs(student, teacher, target, latents, ctx, uctx, noise, index, w, sched)
    return (torch.sqrt((pred - tgt) ** 2 + 0.001 ** 2) - 0.001).flatten(1).mean(1)


def test_lcd_loss_matches_reference_script():
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    loss_fn = LCDLoss(sched.alphas_cumprod, w_min=3.0, w_max=15.0)
    g = torch.Generator().manual_seed(0)
    latents, noise = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    ctx, uctx = torch.randn(4, 6, 16, generator=g), torch.zeros(4, 6, 16)
    draw = loss_fn.draw(4, g)
    draw["index"][0], draw["start"][0], draw["end"][0] = 0, 19, 0  # include the first grid point
    student, teacher, target = fake_net(0.3), fake_net(0.5), fake_net(0.4)
    ours, aux = loss_fn(student, teacher, target, latents, ctx, uctx, noise, draw)
    ref = reference_step(student, teacher, target, latents, ctx, uctx, noise, draw["index"], draw["w"], sched)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6)
    assert aux["student_x0"].shape == latents.shape
    assert (draw["end"] == (draw["start"] - 20).clamp_min(0)).all()
    assert ((draw["w"] >= 3.0) & (draw["w"] <= 15.0)).all()


def test_lcd_loss_gradient_reaches_only_the_student():
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    loss_fn = LCDLoss(sched.alphas_cumprod)
    s = torch.nn.Parameter(torch.tensor(0.3))
    tgt = torch.nn.Parameter(torch.tensor(0.4))

    def student(z, t, c, w):
        return s * z

    def target(z, t, c, w):
        return tgt * z

    g = torch.Generator().manual_seed(1)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    loss, _ = loss_fn(student, fake_net(0.5), target, latents, torch.randn(2, 3, 8), torch.zeros(2, 3, 8), noise,
                      loss_fn.draw(2, g))
    loss.mean().backward()
    assert s.grad is not None and s.grad != 0 and tgt.grad is None


def test_lcd_loss_runs_the_target_before_the_student_builds_its_graph():
    """The target's no-grad forward comes first, so its activations are freed before the student's graph (kept for
    the backward) exists: the step's peak memory is the student's graph alone (docs/results.md, training speed)."""
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    loss_fn = LCDLoss(sched.alphas_cumprod)
    calls = []

    def recording(name, scale):
        net = fake_net(scale)

        def call(z, t, c, w):
            calls.append((name, torch.is_grad_enabled()))
            return net(z, t, c, w)
        return call

    g = torch.Generator().manual_seed(2)
    latents, noise = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    loss_fn(recording("student", 0.3), recording("teacher", 0.5), recording("target", 0.4), latents,
            torch.randn(2, 3, 8), torch.zeros(2, 3, 8), noise, loss_fn.draw(2, g))
    assert calls == [("teacher", False), ("target", False), ("student", True)]


def test_target_context_is_what_the_teacher_and_target_see_and_the_student_keeps_its_own():
    """`--target-captions name`: the LCD step with teacher and target conditioned on `target_context` equals the
    LCD step (the reference's, above) with a teacher and target that read those states whatever they are given;
    without it the step is LCD exactly."""
    sched = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    loss_fn = LCDLoss(sched.alphas_cumprod)
    g = torch.Generator().manual_seed(4)
    latents, noise = torch.randn(3, 4, 8, 8, generator=g), torch.randn(3, 4, 8, 8, generator=g)
    ctx, names, uctx = torch.randn(3, 5, 8, generator=g), torch.randn(3, 5, 8, generator=g), torch.zeros(3, 5, 8)
    student, teacher, target = fake_net(0.3), fake_net(0.5), fake_net(0.4)

    def reading_names(net):  # the text states rows of `ctx` (alone, or batched before the unconditional ones)
        def call(z, t, c, w):
            return net(z, t, torch.cat([names, c[3:]]) if torch.equal(c[:3], ctx) else c, w)
        return call

    draw = loss_fn.draw(3, g)
    named, _ = loss_fn(student, teacher, target, latents, ctx, uctx, noise, draw, target_context=names)
    want, _ = loss_fn(student, reading_names(teacher), reading_names(target), latents, ctx, uctx, noise, draw)
    assert torch.allclose(named, want, atol=1e-6)
    plain, _ = loss_fn(student, teacher, target, latents, ctx, uctx, noise, draw)
    assert torch.equal(plain, loss_fn(student, teacher, target, latents, ctx, uctx, noise, draw,
                                      target_context=ctx)[0])
    assert not torch.allclose(plain, named)
    ref = reference_step(student, teacher, target, latents, ctx, uctx, noise, draw["index"], draw["w"], sched)
    assert torch.allclose(plain, ref, atol=1e-5)
