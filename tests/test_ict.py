"""iCT: the Karras grid, the consistency-model scalings (sigma_min offset, c_in with its square root), the
curriculum, the discretised lognormal, the loss (shared dropout), the multistep sampler (against diffusers'
CMStochasticIterativeScheduler and through the family pipelines), Fashion-MNIST idx files, and training that
checkpoints, resumes exactly and exports (pixel, class-conditional; latent, text-conditioned)."""

import gzip
import math

import numpy as np
import pytest
import torch
from diffusers import CMStochasticIterativeScheduler
from safetensors.torch import load_file

from rglcd.data.fashion_mnist import DEFAULT_ROOT, load_fashion_mnist, padded_model_input
from rglcd.data.shards import DataError
from rglcd.networks import CMDenoiser, FashionClassifier, build_class_unet
from rglcd.objectives import ICTLoss, shared_randomness
from rglcd.schedule import cm_scalings, cm_timestep, ict_num_scales, karras_sigmas, lognormal_interval_probs
from rglcd.scheduling_cm import CMScheduler
from rglcd.training.checkpoints import list_checkpoints
from rglcd.training.ict import ICTConfig, train_ict

CPU = torch.device("cpu")


def tiny_class_unet(dropout: float = 0.0):
    torch.manual_seed(0)
    return build_class_unet((8, 16), dropout=dropout, attention_head_dim=4, sample_size=8)


def test_karras_grid_endpoints_and_diffusers_reference():
    s = karras_sigmas(40)
    assert s.dtype == torch.float64 and s[0].item() == 0.002 and s[-1].item() == 80.0 and (s[1:] > s[:-1]).all()
    ref = CMStochasticIterativeScheduler()._convert_to_karras(np.linspace(0, 1, 40))[::-1].copy()
    assert np.allclose(s.numpy(), ref, rtol=1e-12, atol=0)
    assert karras_sigmas(3)[1].item() == pytest.approx(((0.002 ** (1 / 7) + 80 ** (1 / 7)) / 2) ** 7)
    with pytest.raises(ValueError):
        karras_sigmas(1)


def test_scalings_keep_the_sigma_min_offset_and_c_in_has_its_square_root():
    sigma = torch.tensor([0.002, 0.5, 1.5, 80.0], dtype=torch.float64)
    c_skip, c_out, c_in = cm_scalings(sigma)
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    assert c_in[2].item() == pytest.approx(1 / math.sqrt(1.5 ** 2 + 0.25))  # 0.632, not 1 / 2.5 = 0.4
    assert c_out[2].item() == pytest.approx((1.5 - 0.002) * 0.5 / math.sqrt(2.5))
    ref_skip, ref_out = CMStochasticIterativeScheduler().get_scalings_for_boundary_condition(sigma)
    assert torch.allclose(c_skip, ref_skip) and torch.allclose(c_out, ref_out)
    assert cm_timestep(torch.tensor(80.0)).item() == pytest.approx(250 * math.log(80))


def test_consistency_function_is_the_identity_at_sigma_min():
    f = CMDenoiser(tiny_class_unet()).eval()
    x, labels = torch.randn(3, 1, 8, 8), torch.tensor([0, 3, 9])
    with torch.no_grad():
        assert torch.equal(f(x, torch.full((3,), 0.002), class_labels=labels), x)
        assert not torch.allclose(f(x, torch.full((3,), 1.0), class_labels=labels), x)


@pytest.mark.parametrize("step,expected", [(0, 11), (49_999, 11), (50_000, 21), (100_000, 41), (150_000, 81),
                                           (200_000, 161), (250_000, 321), (300_000, 641), (349_999, 641),
                                           (350_000, 1281), (399_999, 1281)])
def test_curriculum_of_the_paper(step, expected):
    assert ict_num_scales(step, 400_000) == expected  # K' = floor(400000 / (log2(128) + 1)) = 50000


def test_curriculum_of_a_short_run_and_fixed_n():
    assert [ict_num_scales(k, 6000) for k in (0, 749, 750, 1500, 4500, 5250, 5999)] == [11, 11, 21, 41, 641, 1281,
                                                                                       1281]  # K' = 750
    assert ict_num_scales(3, 4) == 81  # K' would be 0: clamped to 1
    fixed = ICTLoss(6000, fixed_scales=161)
    assert {fixed.num_scales(k) for k in (0, 3000, 5999)} == {161}
    loss = ICTLoss(6000)
    assert loss.draw(2, torch.Generator(), 5999)["num_scales"] == 1281
    assert loss.draw(2, torch.Generator(), 0)["num_scales"] == 11  # a function of the step, not of past calls


def test_lognormal_probabilities_sum_to_one_and_favour_the_right_range():
    for n in (11, 161, 1281):
        p = lognormal_interval_probs(karras_sigmas(n))
        assert p.shape == (n - 1,) and (p > 0).all() and p.sum().item() == pytest.approx(1.0, abs=1e-12)
    s = karras_sigmas(1281)
    p = lognormal_interval_probs(s)
    assert p[s[1:] <= math.exp(-1.1)].sum().item() == pytest.approx(0.5, abs=0.01)  # median exp(P_mean)
    one_std = p[(s[:-1] >= math.exp(-3.1)) & (s[1:] <= math.exp(0.9))].sum().item()
    assert 0.66 < one_std < 0.70  # 68% of the mass within one P_std of P_mean
    cdf = lambda v: math.erf((math.log(v) + 1.1) / (2.0 * math.sqrt(2)))  # noqa: E731
    i = 500
    expected = (cdf(s[i + 1].item()) - cdf(s[i].item())) / (cdf(80.0) - cdf(0.002))
    assert p[i].item() == pytest.approx(expected, rel=1e-9)
    uniform = ICTLoss(100, noise_sampling="uniform", fixed_scales=11).draw(4000, torch.Generator().manual_seed(0))
    assert set(uniform["index"].tolist()) == set(range(10))
    lognormal = ICTLoss(100, fixed_scales=11).draw(4000, torch.Generator().manual_seed(0))
    assert lognormal["index"].bincount(minlength=10)[-1] < 100 < lognormal["index"].bincount(minlength=10)[4]


def test_ict_loss_restated_and_its_dropout_is_shared():
    f = CMDenoiser(tiny_class_unet(dropout=0.5)).train()
    x0, noise, labels = torch.randn(4, 1, 8, 8), torch.randn(4, 1, 8, 8), torch.tensor([1, 2, 3, 4])
    loss_fn = ICTLoss(100)
    draw = loss_fn.draw(4, torch.Generator().manual_seed(0), 60)
    lo, hi = draw["sigma_lo"].view(-1, 1, 1, 1), draw["sigma_hi"].view(-1, 1, 1, 1)
    rng = torch.get_rng_state()
    loss = loss_fn(f, x0, noise, draw, class_labels=labels)
    assert torch.equal(torch.get_rng_state(), rng), "the loss must leave the global RNG as it found it"
    with torch.no_grad(), shared_randomness(draw["dropout_seed"], CPU):
        target = f(x0 + lo * noise, draw["sigma_lo"], class_labels=labels)
    with torch.no_grad(), shared_randomness(draw["dropout_seed"], CPU):
        pred = f(x0 + hi * noise, draw["sigma_hi"], class_labels=labels)
    c = 0.00054 * math.sqrt(64)
    expected = ((pred - target).flatten(1).pow(2).sum(1) + c * c).sqrt() - c
    assert torch.allclose(loss.detach(), expected / (draw["sigma_hi"] - draw["sigma_lo"]), rtol=1e-5)
    l2 = ICTLoss(100, loss_type="l2")(f, x0, noise, draw, class_labels=labels)
    assert torch.allclose(l2.detach(), (pred - target).pow(2).flatten(1).mean(1) / (hi - lo).flatten(), rtol=1e-5)
    loss.sum().backward()
    assert f.unet.conv_in.weight.grad.abs().sum() > 0
    # both evaluations at one sigma differ only by dropout: shared masks make the distance vanish
    same = loss_fn(f, x0, noise, dict(draw, sigma_lo=draw["sigma_hi"]), class_labels=labels)
    assert same.abs().max() < 1e-4 < loss.detach().min()
    with torch.no_grad():
        a, b = (f(x0 + noise, torch.ones(4), class_labels=labels) for _ in range(2))
    assert not torch.equal(a, b), "dropout is on: unshared forwards differ"
    with pytest.raises(ValueError, match="unknown loss_type"):
        ICTLoss(100, loss_type="l1")


def test_cm_scheduler_matches_diffusers_consistency_sampler(tmp_path):
    ours = CMScheduler()
    ours.set_timesteps(1)
    assert ours.sigmas.tolist() == [80.0, 0.002] and ours.init_noise_sigma == pytest.approx(80 / math.sqrt(6400.25))
    ours.set_timesteps(2)
    assert ours.sigmas[1].item() == pytest.approx(2.5152, abs=1e-4)
    ref = CMStochasticIterativeScheduler(clip_denoised=False)
    ref.set_timesteps(3)
    ours.set_timesteps(sigmas=ref.sigmas[:-1])
    assert torch.allclose(ours.timesteps, ref.timesteps.float())
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 80.0
    state = x * ours.init_noise_sigma / 80.0
    g_ours, g_ref = torch.Generator().manual_seed(2), torch.Generator().manual_seed(2)
    for i, (t_ours, t_ref) in enumerate(zip(ours.timesteps, ref.timesteps)):
        assert torch.allclose(ours.scale_model_input(state, t_ours), ref.scale_model_input(x, t_ref), atol=1e-5)
        out = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(10 + i))
        state, denoised = ours.step(out, t_ours, state, generator=g_ours, return_dict=False)
        x = ref.step(out, t_ref, x, generator=g_ref).prev_sample
        scale = 1.0 if i == 2 else 1 / (ref.sigmas[i + 1].item() ** 2 + 0.25) ** 0.5
        assert torch.allclose(state, x * scale, atol=1e-4)
    assert torch.equal(state, denoised)
    ours.save_pretrained(tmp_path)
    assert CMScheduler.from_pretrained(tmp_path).config.sigma_data == 0.5
    with pytest.raises(ValueError):
        ours.set_timesteps(0)


def test_family_pipelines_sample_a_consistency_model(family_with_teacher):
    from diffusers.utils.torch_utils import randn_tensor

    from rglcd.evaluate import count_unet_evals
    from rglcd.models import load_family
    from rglcd.training.step import student_from_teacher

    family = load_family(str(family_with_teacher))
    unet = family.unet("teacher")  # the architecture iCT trains (random weights here)
    pipe = family.pipeline("teacher", unet=unet, kind="cm")
    assert type(pipe).__name__ == "StableDiffusionPipeline" and isinstance(pipe.scheduler, CMScheduler)
    embeds = family.encode(["red apple", "cat"])
    f = CMDenoiser(unet)
    for steps in (1, 2):
        with count_unet_evals(unet) as calls:
            latents = pipe(prompt_embeds=embeds, num_inference_steps=steps, guidance_scale=1.0, output_type="latent",
                           generator=torch.Generator().manual_seed(0)).images
        assert calls.calls == steps
        g = torch.Generator().manual_seed(0)  # the algorithm restated on the consistency function
        x = randn_tensor(latents.shape, generator=g) * 80.0
        sigmas = karras_sigmas(steps + 1).flip(0)[:-1]
        for i, sigma in enumerate(sigmas):
            with torch.no_grad():
                x0 = f(x, sigma.float().expand(2), encoder_hidden_states=embeds)
            if i + 1 < steps:
                x = x0 + (sigmas[i + 1] ** 2 - 0.002 ** 2).sqrt().float() * randn_tensor(x.shape, generator=g)
        assert torch.allclose(latents, x0, atol=1e-4)
    guided = student_from_teacher(unet, 256)  # zero guidance projection: computes what `unet` computes
    lcm_pipe = family.pipeline("teacher", unet=guided, kind="cm")
    assert type(lcm_pipe).__name__ == "LatentConsistencyModelPipeline"
    lcm_latents = lcm_pipe(prompt_embeds=embeds, num_inference_steps=2, guidance_scale=3.0, output_type="latent",
                           generator=torch.Generator().manual_seed(0)).images
    assert torch.allclose(lcm_latents, latents, atol=1e-4)


def write_idx(path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def fake_fashion(tmp_path):
    """Fashion-MNIST-shaped idx files: 40 train and 20 test random images, labels 0..9 in turn."""
    root = tmp_path / "fashion"
    root.mkdir()
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 40), ("t10k", 20)):
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return root


def test_fashion_mnist_idx_files(fake_fashion, tmp_path):
    images, labels = load_fashion_mnist("train", fake_fashion)
    assert images.shape == (40, 28, 28) and images.dtype == torch.uint8 and labels.tolist()[:3] == [0, 1, 2]
    x = padded_model_input(images[:2])
    assert x.shape == (2, 1, 32, 32) and x[:, :, :2].eq(-1).all() and -1 <= x.min() and x.max() <= 1
    with pytest.raises(DataError, match="apt-get install -y dataset-fashion-mnist"):
        load_fashion_mnist("test", tmp_path / "missing")


@pytest.mark.skipif(not DEFAULT_ROOT.is_dir(), reason="Debian package dataset-fashion-mnist not installed")
def test_the_debian_package_test_split():
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10000, 28, 28) and labels.bincount().tolist() == [1000] * 10


def _pixel_cfg(data, out, **kw) -> ICTConfig:
    base = dict(data="fashion-mnist", fashion_mnist_dir=str(data), output_dir=str(out), export_dir=None,
                class_channels=(8, 16), attention_head_dim=4, batch_size=4, max_steps=4, checkpoint_every=2,
                eval_every=0, classifier=None)
    return ICTConfig(**{**base, **kw})


def test_pixel_ict_trains_resumes_exactly_and_exports(fake_fashion, tmp_path):
    from rglcd.evaluate_fashion import load_model, sample_classes

    FashionClassifier(width=4, feature_dim=8).save_pretrained(tmp_path / "classifier")
    full = train_ict(_pixel_cfg(fake_fashion, tmp_path / "full", export_dir=str(tmp_path / "full-export"),
                                eval_every=4, eval_images=20, classifier=str(tmp_path / "classifier")))
    assert full["num_scales"] == 81 and full["1step_fd"] >= 0 and 0 <= full["2step_class_accuracy"] <= 1
    assert (tmp_path / "full" / "samples" / "step-4-2step.png").is_file()
    train_ict(_pixel_cfg(fake_fashion, tmp_path / "cut", export_dir=str(tmp_path / "cut-export"), stop_at=2))
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    assert not (tmp_path / "cut-export").exists(), "an unfinished run must not export"
    resumed = train_ict(_pixel_cfg(fake_fashion, tmp_path / "cut", export_dir=str(tmp_path / "cut-export")))
    assert resumed["loss"] == full["loss"]
    a = load_file(str(tmp_path / "full-export" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "cut-export" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    unet, scheduler = load_model(tmp_path / "full-export")
    assert isinstance(scheduler, CMScheduler)
    for steps in (1, 2):
        images, labels = sample_classes(unet, scheduler, 12, steps, seed=0)
        assert images.shape == (12, 1, 32, 32) and labels.tolist()[:3] == [0, 1, 2]


def test_latent_ict_registers_a_member_that_samples_at_1_and_2_steps(family_with_teacher, tmp_path):
    from PIL import Image

    from rglcd.models import load_family
    from rglcd.sampling import Request, generate
    from rglcd.training.cli_args import parse_config, requested_method

    folder = tmp_path / "images"
    folder.mkdir()
    for i, colour in enumerate([(255, 0, 0), (0, 200, 0), (0, 0, 255), (250, 220, 0)]):
        Image.new("RGB", (64, 64), colour).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a {['red', 'green', 'blue', 'yellow'][i]} square")
    root = family_with_teacher
    argv = ["--method", "ict", "--data", str(folder), "--family", str(root), "--output-dir", str(tmp_path / "run"),
            "--export-dir", str(root / "ict"), "--block-out-channels", "32", "32", "--attention-head-dim", "4",
            "--batch-size", "2", "--max-steps", "2", "--eval-every", "2", "--eval-steps", "1", "2"]
    assert requested_method(argv) == "ict"
    metrics = train_ict(parse_config(ICTConfig, argv=argv))
    assert metrics["num_scales"] == 21 and 0 <= metrics["2step_heldout_win_rate"] <= 1
    family = load_family(str(root))
    assert family.member("ict") == {"unet": "ict", "kind": "cm"}
    assert (root / "ict" / "scheduler_config.json").is_file()
    for steps in (1, 2):
        images = generate(family, "ict", Request("red apple", steps=steps, guidance_scale=2.0, num_images=2))
        assert images.shape == (2, 3, 64, 64)


def test_latent_ict_unet_takes_the_dropout_it_is_given():
    """`--dropout` reaches the latent UNet's ResNets (built from the teacher's config, whose default keys
    `from_config` would otherwise reset)."""
    from types import SimpleNamespace

    from rglcd.training.ict import ICTConfig, ict_unet

    batches = SimpleNamespace(latent_shape=(4, 8, 8), empty=torch.zeros(5, 16))
    for p in (0.0, 0.1, 0.3):
        unet = ict_unet(ICTConfig(dropout=p, block_out_channels=(32, 32), attention_head_dim=4), object(), batches)
        assert unet.config.dropout == p
        assert {m.p for m in unet.modules() if isinstance(m, torch.nn.Dropout)} >= {p}
