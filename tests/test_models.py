"""One loader for every family: emoji-64 (committed), a tiny SD2.1-shaped family from local folders, hub ids offline."""

import json

import pytest
import torch

from rglcd.models import MINILM_SHA256, PRESETS, ModelLoadError, _verify_sha256, encode_prompts, load_family, \
    minilm_path
from rglcd.sampling import Request, generate


def test_minilm_checksum_is_verified(tmp_path):
    assert (minilm_path() / "model.safetensors").is_file()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not the weights")
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        _verify_sha256(bad, MINILM_SHA256)


def test_tiny_sd21_family_loads_from_repo_layout_and_samples(tiny_sd21_repo, tmp_path):
    spec = json.loads(json.dumps(PRESETS["sd21-base"]))
    repo = str(tiny_sd21_repo)
    for key in ("vae", "text_encoder", "tokenizer", "scheduler"):
        spec[key]["repo"] = repo
    spec["members"]["teacher"]["unet"]["repo"] = repo
    spec.update(resolution=64, max_length=16)
    (tmp_path / "family.json").write_text(json.dumps(spec))
    family = load_family(str(tmp_path))
    assert type(family.vae).__name__ == "AutoencoderKL"
    assert type(family.text_encoder).__name__ == "CLIPTextModel"
    assert family.tokenizer.model_max_length == 16
    assert family.scheduler_config["prediction_type"] == "v_prediction"
    states = encode_prompts(family.tokenizer, family.text_encoder, ["a cat", "a dog"])
    assert states.shape == (2, 16, 32)
    images = generate(family, "teacher", Request("a cat", steps=2, guidance_scale=3.0, num_images=2))
    assert images.shape == (2, 3, 64, 64) and images.min() >= 0 and images.max() <= 1
    again = generate(family, "teacher", Request("a cat", steps=2, guidance_scale=3.0, num_images=2))
    assert torch.equal(images, again)


def test_hub_id_offline_fails_with_the_id_in_the_message():
    family = load_family("sd21")
    with pytest.raises(ModelLoadError, match="stabilityai/stable-diffusion-2-1") as err:
        family.unet("teacher")
    assert "offline" in str(err.value)


def test_unknown_family_member_and_missing_folder():
    with pytest.raises(ModelLoadError, match="unknown model family 'nope'"):
        load_family("nope")
    with pytest.raises(ModelLoadError, match="has no model 'lcm-xl'"):
        load_family("emoji-64").member("lcm-xl")
    with pytest.raises(ModelLoadError, match="family file not found|unknown model family"):
        load_family("/does/not/exist/family.json")


def test_emoji64_family_components():
    family = load_family("emoji-64")
    assert family.resolution == 64
    assert type(family.vae).__name__ == "AutoencoderTiny"
    assert family.vae.config.scaling_factor != 1.0
    assert len(family.tokenizer) == 30522 and family.tokenizer.model_max_length == 32
    unet = family.unet("teacher")
    assert unet.config.cross_attention_dim == 384 and unet.config.sample_size * 4 == 64


def test_emoji64_teacher_pipeline_uses_sd_ddim_settings():
    pipe = load_family("emoji-64").pipeline("teacher")
    cfg = pipe.scheduler.config
    assert type(pipe).__name__ == "StableDiffusionPipeline" and type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert (cfg.beta_schedule, cfg.prediction_type, cfg.set_alpha_to_one, cfg.steps_offset) == (
        "scaled_linear", "epsilon", False, 1)
    assert pipe.vae_scale_factor == 4
