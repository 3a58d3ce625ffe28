"""TCD (trajectory consistency distillation, Zheng et al. 2024, arXiv 2402.19159): the objective restated from the
paper's equations, its edge cases, its draw, training a tiny member, and its sampler against diffusers' own
TCDScheduler in diffusers' own pipeline call."""

from __future__ import annotations

import math

import pytest
import torch

from rglcd.consistency import consistency_output
from rglcd.methods import METHODS, Trainer
from rglcd.models import load_family
from rglcd.objectives import LCDLoss, TCDLoss
from rglcd.samplers import sampler_class
from rglcd.sampling import Request, generate
from rglcd.schedule import scaled_linear_alphas_cumprod
from rglcd.training.distill import DistillConfig, train_distill

AC = scaled_linear_alphas_cumprod(1000)


def paper_tcf(eps: torch.Tensor, x_t: torch.Tensor, t: int, s: int) -> torch.Tensor:
    """The trajectory consistency function's first-order semi-linear form (the paper's exponential-integrator
    parameterisation), in float64 from the schedule alone: alpha = sqrt(alphas_cumprod), sigma = sqrt(1 -
    alphas_cumprod), lambda = log(alpha / sigma), h = lambda_s - lambda_t, x0 = (x_t - sigma_t eps) / alpha_t,
    x_s = (sigma_s / sigma_t) x_t - alpha_s (e^{-h} - 1) x0."""
    ac = AC.double()
    a_t, s_t, a_s, s_s = ac[t].sqrt(), (1 - ac[t]).sqrt(), ac[s].sqrt(), (1 - ac[s]).sqrt()
    h = math.log(a_s / s_s) - math.log(a_t / s_t)
    x0 = (x_t.double() - s_t * eps.double()) / a_t
    return (s_s / s_t) * x_t.double() - a_s * (math.exp(-h) - 1) * x0


def test_tcd_output_is_the_papers_semi_linear_form_and_its_ends():
    loss = TCDLoss(AC)
    g = torch.Generator().manual_seed(0)
    eps, x_t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 4, 8, 8, generator=g)
    for t, s in [(999, 499), (759, 19), (259, 239), (39, 19)]:
        got = loss.output(eps, x_t, torch.tensor([t]), {"s": torch.tensor([s])})
        assert torch.allclose(got.double(), paper_tcf(eps, x_t, t, s), rtol=0, atol=2e-5), (t, s)
    # s = t: the state itself; s = 0: the LCD target (LCD's boundary scalings), exactly
    assert torch.allclose(loss.output(eps, x_t, torch.tensor([499]), {"s": torch.tensor([499])}), x_t, atol=1e-5)
    lcd = LCDLoss(AC)
    for t in (999, 19, 0):
        assert torch.equal(loss.output(eps, x_t, torch.tensor([t]), {"s": torch.tensor([0])}),
                           lcd.output(eps, x_t, torch.tensor([t]), {}))
    assert torch.equal(lcd.output(eps, x_t, torch.tensor([19]), {}),
                       consistency_output(eps, x_t, torch.tensor([19]), AC))
    ddim_end = TCDLoss(AC, clean_end="ddim").output(eps, x_t, torch.tensor([999]), {"s": torch.tensor([0])})
    assert torch.allclose(ddim_end.double(), paper_tcf(eps, x_t, 999, 0), atol=2e-5)


def test_tcd_draw_is_lcds_then_s_uniform_from_0_to_t_n():
    tcd, lcd = TCDLoss(AC), LCDLoss(AC)
    a = tcd.draw(200_000, torch.Generator().manual_seed(1))
    b = lcd.draw(200_000, torch.Generator().manual_seed(1))
    assert all(torch.equal(a[k], b[k]) for k in b)  # s is drawn after LCD's draws: the rest is LCD's step
    assert ((a["s"] >= 0) & (a["s"] <= a["end"])).all()
    allowed = set((tcd.grid - tcd.k).clamp_min(0).tolist())
    assert set(a["s"].tolist()) <= allowed
    top = a["index"] == 49  # t_n = 979: s takes each of the 50 values 0, 19, ..., 979 about equally often
    counts = torch.bincount(((a["s"][top] + 1) // tcd.k), minlength=50).float()
    assert len(counts) == 50 and counts.min() > 0.5 * counts.mean()
    first = a["index"] == 0  # t_n = 0: s = 0 only
    assert (a["s"][first] == 0).all()


def test_tcd_is_a_registered_method_with_diffusers_tcd_sampler():
    method = METHODS["tcd"]
    assert method.objective is TCDLoss and method.trainer is Trainer.DISTILL and method.kind == "tcd"
    assert issubclass(sampler_class("tcd"), __import__("diffusers").TCDScheduler)
    assert sampler_class("tcd")().config.gamma == 0.3  # the paper's default gamma


@pytest.fixture(scope="module")
def tcd_family(tmp_path_factory: pytest.TempPathFactory, tiny_emoji_family) -> str:
    """The tiny family with a tiny teacher and a `tcd` member trained 4 steps."""
    import shutil

    from rglcd.training.teacher import TeacherConfig, build_unet

    root = tmp_path_factory.mktemp("tcd") / "family"
    shutil.copytree(tiny_emoji_family, root)
    torch.manual_seed(0)
    build_unet(TeacherConfig(block_out_channels=(32, 32), attention_head_dim=4), 16, 384).save_pretrained(
        root / "teacher")
    threads = torch.get_num_threads()
    try:
        metrics = train_distill(DistillConfig.of(
            family=str(root), method="tcd", member="tcd", output_dir=str(root.parent / "run"),
            export_dir=str(root / "tcd"), batch_size=4, max_steps=4, warmup_steps=1, checkpoint_every=2,
            eval_every=4, eval_steps=2, limit_concepts=16, learning_rate=1e-3))
    finally:
        torch.set_num_threads(threads)
    assert metrics["steps"] == 4 and math.isfinite(metrics["loss"])
    return str(root)


def test_tcd_trains_registers_and_samples(tcd_family):
    family = load_family(tcd_family)
    assert family.member("tcd") == {"unet": "tcd", "kind": "tcd"}
    pipe = family.pipeline("tcd")
    assert type(pipe.scheduler).__name__ == "TCDGammaScheduler" and pipe.scheduler.config.gamma == 0.3
    images = generate(family, "tcd", Request("red apple", steps=4, guidance_scale=4.0, num_images=2, seed=3))
    assert images.shape == (2, 3, 64, 64) and torch.isfinite(images).all()


@pytest.mark.parametrize("gamma, steps", [(0.3, 4), (0.0, 2), (1.0, 8)])
def test_tcd_member_samples_as_diffusers_tcd_pipeline_call(tcd_family, gamma, steps):
    """Our member (LatentConsistencyModelPipeline + TCDGammaScheduler, gamma from the family entry) against
    diffusers' StableDiffusionPipeline with diffusers' own TCDScheduler and `eta=gamma`, the way TCD's authors
    sample: the same images."""
    from diffusers import StableDiffusionPipeline, TCDScheduler

    family = load_family(tcd_family)
    ours = family.pipeline("tcd", scheduler_options={"gamma": gamma})
    theirs = StableDiffusionPipeline(vae=family.vae, text_encoder=family.text_encoder, tokenizer=family.tokenizer,
                                     unet=family.unet("tcd"), scheduler=TCDScheduler.from_config(
                                         family.scheduler_config), safety_checker=None, feature_extractor=None,
                                     requires_safety_checker=False)
    theirs.set_progress_bar_config(disable=True)
    prompts = ["red apple", "cat"]
    a = ours(prompts, num_inference_steps=steps, guidance_scale=4.0, generator=torch.Generator().manual_seed(7),
             output_type="pt").images
    b = theirs(prompts, num_inference_steps=steps, guidance_scale=4.0, eta=gamma,
               generator=torch.Generator().manual_seed(7), output_type="pt").images
    assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()


def test_the_shipped_tcd_member_samples_at_gamma_0_3_and_is_an_optional_app_column():
    """assets/models/emoji-64/tcd (issue 33): registered as kind tcd with its validation-half gamma, not a default
    column of the app but one a user may add."""
    from rglcd.demo.engine import family_columns
    from rglcd.demo.page import zoo_members
    from rglcd.models import load_family

    family = load_family("emoji-64")
    assert family.member("tcd")["kind"] == "tcd" and family.defaults("tcd").eta == 0.3
    columns = family_columns("emoji-64")
    assert "tcd" not in columns and "tcd" in zoo_members(family, columns)
