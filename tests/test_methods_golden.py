"""Each distillation method's trainer on a tiny family and a fixed seed reproduces the figures recorded before the
method registry refactor (tests/data/distill-golden.json, written at commit f750018 by this file with
RGLCD_RECORD_GOLDEN=1, on an AVX512 CPU): the final loss and reward scalars and a fingerprint of the exported
weights, after two optimiser steps, within the tolerances that tests/golden.py derives from float rounding (they
pass on any CPU kernel and thread count; a 1e-3 change of a loss weight or of beta fails them)."""

from pathlib import Path

import pytest

from rglcd.training.distill import DistillConfig, train_distill
from tests.golden import check_against_record, fingerprint

GOLDEN = Path(__file__).parent / "data" / "distill-golden.json"
CASES = {
    "lcd": {},
    "lcd-lora": {"lora_rank": 4},
    "rg-lcd": {"method": "rg-lcd", "reward_scale": 0.5},
    "rg-lcd-sampler": {"method": "rg-lcd", "reward_scale": 0.5, "reward_states": "sampler", "reward_sampler_steps": 3},
    "rg-lcd-proxy": {"method": "rg-lcd", "reward_scale": 0.5, "proxy_rm": True, "proxy_lr": 1e-3},
    "mlcm": {"method": "mlcm", "segments": 2},
    "mlcm-reward": {"method": "mlcm", "segments": 4, "reward": "family", "reward_scale": 0.5},
}


def _config(flat: dict) -> DistillConfig:  # noqa: D103
    return DistillConfig.of(**flat)


def _flat(root: Path, out: Path, case: str) -> dict:  # noqa: D103
    return dict(family=str(root), output_dir=str(out / "run"), export_dir=str(out / "export"), batch_size=4,
                max_steps=2, warmup_steps=1, checkpoint_every=2, eval_every=0, limit_concepts=16, seed=3,
                member=case) | CASES[case]


def _run(root: Path, out: Path, case: str) -> tuple[dict, float]:
    """The case's scalars and weight fingerprint, and the largest exported |weight|."""
    metrics = train_distill(_config(_flat(root, out, case)))
    keep = {k: float(v) for k, v in metrics.items() if k in ("loss", "reward", "proxy_loss", "expert_reward")}
    weights, biggest = fingerprint(out / "export")
    return keep | {"weights": weights}, biggest


@pytest.mark.parametrize("case", list(CASES))
def test_method_reproduces_the_recorded_step(family_with_teacher, tmp_path, case):
    cfg = _config(_flat(family_with_teacher, tmp_path, case))
    got, biggest = _run(family_with_teacher, tmp_path, case)
    beta = cfg.rg.reward_scale if "reward" in got else None
    check_against_record(GOLDEN, case, got, cfg.optim.learning_rate, biggest, beta)
