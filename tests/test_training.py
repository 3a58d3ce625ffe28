"""Smoke runs of the trainers on tiny models: they train, checkpoint, export, and resume exactly."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from rglcd.training.autoencoder import AutoencoderConfig, psnr, train_autoencoder
from rglcd.training.checkpoints import list_checkpoints
from rglcd.training.teacher import TeacherConfig, train_teacher

ROOT = Path(__file__).resolve().parents[1]


def test_psnr_values():
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    assert psnr(x, x).min() > 90
    noisy = (x + 0.2).clamp(-1, 1)
    assert 15 < psnr(noisy, x).mean() < 30


def test_autoencoder_trains_and_exports(tmp_path):
    cfg = AutoencoderConfig(output_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "vae"), channels=8,
                            encoder_blocks=(1, 1, 1), decoder_blocks=(1, 1, 1), batch_size=4, max_steps=3,
                            checkpoint_every=2, eval_every=3, limit_concepts=8, recenter_steps=2)
    metrics = train_autoencoder(cfg)
    assert "psnr_heldout" in metrics and metrics["steps"] == 3
    assert max(abs(m) for m in metrics["removed_latent_mean"]) > 0 and metrics["residual_latent_mean"] < 1e-5
    saved = json.loads((tmp_path / "vae" / "config.json").read_text())
    assert abs(saved["scaling_factor"] - 1 / metrics["latent_std"]) < 1e-6
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-2", "checkpoint-3"]


def _teacher_cfg(family, out, **kw):
    base = dict(family=str(family), output_dir=str(out), export_dir=str(out / "export"), block_out_channels=(32, 32),
                attention_head_dim=4, batch_size=4, max_steps=4, warmup_steps=1, checkpoint_every=2, eval_every=4,
                eval_steps=2, limit_concepts=16)
    base.update(kw)
    return TeacherConfig(**base)


def test_teacher_trains_checkpoints_and_resumes_exactly(tiny_emoji_family, tmp_path):
    full = train_teacher(_teacher_cfg(tiny_emoji_family, tmp_path / "full"))
    assert 0 <= full["train_win_rate"] <= 1 and 0 <= full["heldout_win_rate"] <= 1
    assert (tmp_path / "full" / "samples" / "step-4-train.png").is_file()
    # interrupted run: stop at step 2 (same schedule), then resume to 4 from checkpoint-2
    train_teacher(_teacher_cfg(tiny_emoji_family, tmp_path / "cut", stop_at=2))
    assert not (tmp_path / "cut" / "export").exists(), "an unfinished run must not export"
    assert [p.name for p in list_checkpoints(tmp_path / "cut")] == ["checkpoint-2"]
    resumed = train_teacher(_teacher_cfg(tiny_emoji_family, tmp_path / "cut"))
    assert resumed["loss"] == full["loss"]
    a = load_file(str(tmp_path / "full" / "export" / "diffusion_pytorch_model.safetensors"))
    b = load_file(str(tmp_path / "cut" / "export" / "diffusion_pytorch_model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_teacher_fine_tune_registers_under_its_own_member_and_keeps_the_familys_teacher(family_with_teacher,
                                                                                           tmp_path):
    root = family_with_teacher
    before = json.loads((root / "family.json").read_text())["members"]["teacher"]
    train_teacher(_teacher_cfg(root, tmp_path / "ft", export_dir="auto", member="teacher-ft", max_steps=2,
                               eval_every=0, init_unet=str(root / "teacher"), captions="wide", limit_concepts=4))
    members = json.loads((root / "family.json").read_text())["members"]
    assert members["teacher"] == before and members["teacher-ft"]["kind"] == "teacher"
    assert (root / "teacher-ft" / "diffusion_pytorch_model.safetensors").is_file()


def test_teacher_runs_under_accelerate_launch(tiny_emoji_family, tmp_path, private_cache):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "1", "--cpu",
           "train/teacher.py", "--family", str(tiny_emoji_family), "--output-dir", str(tmp_path / "run"),
           "--export-dir", str(tmp_path / "export"), "--block-out-channels", "32", "32", "--attention-head-dim", "4",
           "--batch-size", "2", "--max-steps", "2", "--checkpoint-every", "1", "--eval-every", "100",
           "--limit-concepts", "8", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "export" / "config.json").is_file()
    assert [p.name for p in list_checkpoints(tmp_path / "run")] == ["checkpoint-1", "checkpoint-2"]
