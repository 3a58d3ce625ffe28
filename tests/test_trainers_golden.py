"""The iCT and teacher trainers on tiny models and a fixed seed reproduce the figures recorded before the trainer
refactor (tests/data/trainers-golden.json, written at commit 9272dd3 by this file with RGLCD_RECORD_GOLDEN=1, on one
CPU thread): the final loss scalars and a fingerprint of the exported (EMA) weights after two optimiser steps. iCT
runs on latents (the tiny family's emoji data) and on pixels (Fashion-MNIST-shaped random idx files).

The losses are bit-exact. The exported EMA weights agree to float rounding (fingerprints within 1e-10 relative): the
EMA is now `rglcd.training.ema` (a foreach lerp, as the distillation target's, whose CPU kernel fuses the multiply
and add) where it was diffusers' `EMAModel` (s - (1 - decay) (s - p), rounded twice); the decay schedules are the
same (tests/test_ema.py)."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from rglcd.training.ict import ICTConfig, train_ict
from rglcd.training.teacher import TeacherConfig, train_teacher
from tests.test_ict import write_idx
from tests.test_methods_golden import _fingerprint

GOLDEN = Path(__file__).parent / "data" / "trainers-golden.json"
SCALARS = ("loss", "mse", "num_scales")


def _fashion(folder: Path) -> Path:
    """Fashion-MNIST-shaped idx files: 16 random train images, labels 0..9 in turn."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (16, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(16) % 10)
    return folder


def _run(case: str, family: Path, out: Path) -> dict:
    common = dict(output_dir=str(out / "run"), export_dir=str(out / "export"), batch_size=4, max_steps=2,
                  checkpoint_every=2, eval_every=0, seed=3)
    if case == "teacher":
        metrics = train_teacher(TeacherConfig(family=str(family), block_out_channels=(32, 32), attention_head_dim=4,
                                              warmup_steps=1, limit_concepts=16, **common))
    elif case == "ict-latent":
        metrics = train_ict(ICTConfig(family=str(family), block_out_channels=(32, 32), attention_head_dim=4,
                                      limit_concepts=16, **common))
    else:
        metrics = train_ict(ICTConfig(data="fashion-mnist", fashion_mnist_dir=str(_fashion(out / "fashion")),
                                      class_channels=(8, 16), attention_head_dim=4, classifier=None, **common))
    return {k: float(v) for k, v in metrics.items() if k in SCALARS} | {"weights": _fingerprint(out / "export")}


@pytest.fixture()
def one_thread():
    """One torch CPU thread, as the figures were recorded with: float reductions split over more threads round
    differently."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("case", ["teacher", "ict-latent", "ict-pixel"])
def test_trainer_reproduces_the_recorded_steps(family_with_teacher, tmp_path, case, one_thread):
    got = _run(case, family_with_teacher, tmp_path)
    if os.environ.get("RGLCD_RECORD_GOLDEN"):
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps(recorded | {case: got}, indent=1, sort_keys=True) + "\n")
        return
    expected = json.loads(GOLDEN.read_text())[case]
    assert {k: v for k, v in got.items() if k != "weights"} == {k: v for k, v in expected.items() if k != "weights"}
    assert got["weights"] == pytest.approx(expected["weights"], rel=1e-9, abs=0)
