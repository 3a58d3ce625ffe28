"""Schedule math against diffusers' own classes: DDPM/DDIM/LCM schedulers and the LCM pipeline's embedding."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, LatentConsistencyModelPipeline, LCMScheduler

from rglcd.schedule import (boundary_scalings, ddim_skip_grid, ddim_solver_step, guidance_scale_embedding,
                            predicted_noise, predicted_x0, scaled_linear_alphas_cumprod)

SD = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def test_alphas_cumprod_match_diffusers():
    ref = DDPMScheduler(**SD).alphas_cumprod
    assert torch.allclose(scaled_linear_alphas_cumprod(), ref, atol=1e-6)


def test_skip_grid_matches_lcm_scheduler_origin_steps():
    grid = ddim_skip_grid(1000, 50)
    assert grid[:3].tolist() == [19, 39, 59] and grid[-1] == 999 and len(grid) == 50
    lcm = LCMScheduler(**SD, set_alpha_to_one=False)
    lcm.set_timesteps(4, original_inference_steps=50)
    assert set(lcm.timesteps.tolist()) <= set(grid.tolist())
    lcm.set_timesteps(50, original_inference_steps=50)
    assert sorted(lcm.timesteps.tolist()) == grid.tolist()


def test_boundary_scalings_match_lcm_scheduler():
    lcm = LCMScheduler(**SD)
    for t in [0, 1, 19, 259, 999]:
        ref_skip, ref_out = lcm.get_scalings_for_boundary_condition_discrete(t)
        c_skip, c_out = boundary_scalings(torch.tensor([t]))
        assert c_skip.item() == pytest.approx(float(ref_skip), rel=1e-6)
        assert c_out.item() == pytest.approx(float(ref_out), rel=1e-6)
    c_skip, c_out = boundary_scalings(torch.tensor([0]))
    assert c_skip.item() == 1.0 and c_out.item() == 0.0


def test_guidance_embedding_matches_lcm_pipeline():
    w = torch.tensor([0.0, 3.5, 7.0, 14.0])
    ref = LatentConsistencyModelPipeline.get_guidance_scale_embedding(None, w, embedding_dim=256)
    assert torch.allclose(guidance_scale_embedding(w, 256), ref, atol=1e-5)
    assert guidance_scale_embedding(w, 7).shape == (4, 7)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_x0_and_noise_conversions_invert_the_forward_process(prediction_type):
    ac = scaled_linear_alphas_cumprod()
    t = torch.tensor([0, 250, 600, 999])
    x0, eps = torch.randn(4, 4, 8, 8), torch.randn(4, 4, 8, 8)
    a, s = ac[t].sqrt().view(4, 1, 1, 1), (1 - ac[t]).sqrt().view(4, 1, 1, 1)
    zt = a * x0 + s * eps
    out = {"epsilon": eps, "v_prediction": a * eps - s * x0, "sample": x0}[prediction_type]
    assert torch.allclose(predicted_x0(out, t, zt, ac, prediction_type), x0, atol=2e-3)
    assert torch.allclose(predicted_noise(out, t, zt, ac, prediction_type), eps, atol=2e-3 if prediction_type !=
                          "sample" else 5e-2)


def test_ddim_solver_step_matches_ddim_scheduler():
    ddim = DDIMScheduler(**SD, set_alpha_to_one=False, timestep_spacing="trailing", clip_sample=False)
    ddim.set_timesteps(50)
    grid = ddim_skip_grid()
    assert ddim.timesteps.tolist() == grid.flip(0).tolist()
    ac = ddim.alphas_cumprod
    sample, eps = torch.randn(1, 4, 8, 8), torch.randn(1, 4, 8, 8)
    for index in [49, 20, 1, 0]:
        t = grid[index : index + 1]
        ref = ddim.step(eps, int(t), sample).prev_sample
        x0 = predicted_x0(eps, t, sample, ac)
        ours = ddim_solver_step(x0, eps, t - 20, ac)
        assert torch.allclose(ours, ref, atol=1e-5), index
