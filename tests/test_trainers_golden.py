"""The iCT and teacher trainers on tiny models and a fixed seed reproduce the figures recorded before the trainer
refactor (tests/data/trainers-golden.json, written at commit 9272dd3 by this file with RGLCD_RECORD_GOLDEN=1, on one
thread of an AVX512 CPU; `ict-latent` re-recorded at this file's 2026-12-07 change on an AVX2 CPU, when the latent UNet began to take its --dropout): the final loss scalars and a fingerprint of the exported (EMA) weights after two optimiser
steps, within the tolerances that tests/golden.py derives from float rounding. iCT runs on latents (the tiny
family's emoji data) and on pixels (Fashion-MNIST-shaped random idx files)."""

from pathlib import Path

import numpy as np
import pytest

from rglcd.training.ict import ICTConfig, train_ict
from rglcd.training.teacher import TeacherConfig, train_teacher
from tests.golden import check_against_record, fingerprint
from tests.test_ict import write_idx

GOLDEN = Path(__file__).parent / "data" / "trainers-golden.json"
SCALARS = ("loss", "mse", "num_scales")


def _fashion(folder: Path) -> Path:
    """Fashion-MNIST-shaped idx files: 16 random train images, labels 0..9 in turn."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    write_idx(folder / "train-images-idx3-ubyte.gz", rng.integers(0, 256, (16, 28, 28)))
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.arange(16) % 10)
    return folder


def _run(case: str, family: Path, out: Path) -> tuple[dict, float, float]:
    """The case's scalars and weight fingerprint, its learning rate and the largest exported |weight|."""
    common = dict(output_dir=str(out / "run"), export_dir=str(out / "export"), batch_size=4, max_steps=2,
                  checkpoint_every=2, eval_every=0, seed=3)
    if case == "teacher":
        cfg = TeacherConfig(family=str(family), block_out_channels=(32, 32), attention_head_dim=4, warmup_steps=1,
                            limit_concepts=16, **common)
        metrics = train_teacher(cfg)
    elif case == "ict-latent":
        cfg = ICTConfig(family=str(family), block_out_channels=(32, 32), attention_head_dim=4, limit_concepts=16,
                        **common)
        metrics = train_ict(cfg)
    else:
        cfg = ICTConfig(data="fashion-mnist", fashion_mnist_dir=str(_fashion(out / "fashion")),
                        class_channels=(8, 16), attention_head_dim=4, classifier=None, **common)
        metrics = train_ict(cfg)
    weights, biggest = fingerprint(out / "export")
    scalars = {k: float(v) for k, v in metrics.items() if k in SCALARS}
    return scalars | {"weights": weights}, cfg.learning_rate, biggest


@pytest.mark.parametrize("case", ["teacher", "ict-latent", "ict-pixel"])
def test_trainer_reproduces_the_recorded_steps(family_with_teacher, tmp_path, case):
    got, learning_rate, biggest = _run(case, family_with_teacher, tmp_path)
    check_against_record(GOLDEN, case, got, learning_rate, biggest)
