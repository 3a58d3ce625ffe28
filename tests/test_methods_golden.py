"""Each distillation method's trainer on a tiny family and a fixed seed reproduces the figures recorded before the
method registry refactor (tests/data/distill-golden.json, written at commit f750018 by this file with
RGLCD_RECORD_GOLDEN=1): the final loss and reward scalars and a fingerprint of the exported weights, after two
optimiser steps. LCD, LCD-LoRA and MLCM agree to 1e-9 relative (the refactor itself was bit-exact; AdamW's
fused kernel, adopted afterwards for speed, rounds differently from the kernel the figures were recorded with);
the methods with a reward term to 1e-5 (it is now averaged per sample inside `RGLCDLoss` instead of after the loss
mean)."""

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rglcd.training.distill import DistillConfig, train_distill

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
EXACT = ("lcd", "lcd-lora", "mlcm")


def _config(flat: dict) -> DistillConfig:  # noqa: D103
    return DistillConfig.of(**flat)


def _fingerprint(folder: Path) -> list[float]:
    """(sum, sum of squares, sum of index-weighted values) over every tensor of the exported weights."""
    files = sorted(folder.glob("*.safetensors"))
    total = torch.zeros(3, dtype=torch.float64)
    for f in files:
        for name, value in sorted(load_file(str(f)).items()):
            v = value.double().flatten()
            total += torch.stack([v.sum(), (v * v).sum(), (v * torch.arange(1, len(v) + 1, dtype=torch.float64)
                                                            / len(v)).sum()])
    return total.tolist()


def _run(root: Path, out: Path, case: str) -> dict[str, float]:
    flat = dict(family=str(root), output_dir=str(out / "run"), export_dir=str(out / "export"), batch_size=4,
                max_steps=2, warmup_steps=1, checkpoint_every=2, eval_every=0, limit_concepts=16, seed=3,
                member=case) | CASES[case]
    metrics = train_distill(_config(flat))
    keep = {k: float(v) for k, v in metrics.items() if k in ("loss", "reward", "proxy_loss", "expert_reward")}
    return keep | {"weights": _fingerprint(out / "export")}


@pytest.mark.parametrize("case", list(CASES))
def test_method_reproduces_the_recorded_step(family_with_teacher, tmp_path, case):
    got = _run(family_with_teacher, tmp_path, case)
    if os.environ.get("RGLCD_RECORD_GOLDEN"):
        recorded = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        GOLDEN.write_text(json.dumps(recorded | {case: got}, indent=1, sort_keys=True) + "\n")
        return
    expected = json.loads(GOLDEN.read_text())[case]
    assert set(got) == set(expected)
    rel = 1e-9 if case in EXACT else 1e-5
    for key, value in expected.items():
        assert got[key] == pytest.approx(value, rel=rel, abs=rel / 100), key
