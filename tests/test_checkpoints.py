"""Checkpoints resume weights-only (a registered object's state holding anything but tensors and plain values is
refused instead of unpickled), skip corrupt or empty newest checkpoints with a warning (one error line when none is
intact), and refuse a resume whose settings differ in one that shapes training. The trainer-level checks (exit 2 from
train/distill.py, nothing written, the fallback run ending as the uninterrupted one) are in tests/test_distill.py."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from rglcd.training.checkpoints import StepCounter, resume_checkpoint, save_checkpoint


class Marker:
    """A class a weights-only load must refuse to build."""


def test_registered_states_resume_weights_only(tmp_path: Path) -> None:
    accelerator = Accelerator(cpu=True)
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    counter.step = 5
    path = save_checkpoint(accelerator, tmp_path, 5)
    assert path.name == "checkpoint-5" and not list(tmp_path.glob(".checkpoint-*"))
    counter.step = 0
    assert resume_checkpoint(accelerator, tmp_path, "latest") == path and counter.step == 5
    torch.save({"step": Marker()}, path / "custom_checkpoint_0.pkl")
    (path / "run_settings.json").unlink()  # a crafted checkpoint need not carry a record of its files' sizes
    with pytest.raises(ValueError, match="holds more than tensors and plain values; not loaded \\(weights-only\\)"):
        resume_checkpoint(accelerator, tmp_path, str(path))
    import accelerate.accelerator as accelerator_module

    assert accelerator_module.load_custom_state.__module__ == "accelerate.checkpointing", "patch undone"


def _run(tmp_path: Path, steps: tuple[int, ...], settings: dict | None = None) -> tuple[Accelerator, StepCounter]:
    """An accelerator with a tiny model and a step counter, checkpointed at `steps` under `tmp_path`."""
    accelerator = Accelerator(cpu=True)
    torch.manual_seed(0)
    accelerator.prepare(torch.nn.Linear(4, 4))
    counter = StepCounter()
    accelerator.register_for_checkpointing(counter)
    for step in steps:
        counter.step = step
        save_checkpoint(accelerator, tmp_path, step, None, settings)
    counter.step = 0
    return accelerator, counter


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


@pytest.mark.parametrize("damage", ["truncated", "missing", "truncated-unrecorded"])
def test_corrupt_newest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path: Path, damage: str, capsys) -> None:
    accelerator, counter = _run(tmp_path, (2, 4), {"seed": 0})
    weights = tmp_path / "checkpoint-4" / "model.safetensors"
    if damage == "missing":
        weights.unlink()
    else:
        _truncate(weights)
    if damage == "truncated-unrecorded":  # a checkpoint from before records: the safetensors header tells
        (tmp_path / "checkpoint-4" / "run_settings.json").unlink()
    assert resume_checkpoint(accelerator, tmp_path, "latest", {"seed": 0}) == tmp_path / "checkpoint-2"
    assert counter.step == 2
    warning = [line for line in capsys.readouterr().err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and "checkpoint-4 (model.safetensors is" in warning[0]
    assert warning[0].endswith("resuming from the newest intact one, " + str(tmp_path / "checkpoint-2"))
    with pytest.raises(ValueError, match=r"checkpoint .*checkpoint-4 is corrupt \(model.safetensors is .*--resume none"):
        resume_checkpoint(accelerator, tmp_path, str(tmp_path / "checkpoint-4"))


def test_empty_checkpoint_folder_is_skipped_and_none_intact_is_one_error(tmp_path: Path, capsys) -> None:
    accelerator, counter = _run(tmp_path, (2,))
    (tmp_path / "checkpoint-6").mkdir()
    assert resume_checkpoint(accelerator, tmp_path, "latest") == tmp_path / "checkpoint-2" and counter.step == 2
    assert "checkpoint-6 (empty) skipped; resuming from the newest intact one" in capsys.readouterr().err
    (tmp_path / "checkpoint-2" / "random_states_0.pkl").write_bytes(b"PK\x03\x04")  # a zip archive cut short
    with pytest.raises(ValueError) as err:
        resume_checkpoint(accelerator, tmp_path, "latest")
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"no intact checkpoint under {tmp_path}: checkpoint-6 (empty), "
                                                      "checkpoint-2 (random_states_0.pkl is truncated: 4 of its")
    assert message.endswith("start afresh with --resume none, or give another --output-dir")


def test_settings_are_recorded_and_a_resume_must_match_the_ones_that_shape_training(tmp_path: Path, capsys) -> None:
    recorded = {"seed": 0, "learning_rate": 2e-4, "max_steps": 4, "eval_every": 2}
    accelerator, counter = _run(tmp_path, (4,), recorded)
    with pytest.raises(ValueError) as err:
        resume_checkpoint(accelerator, tmp_path, "latest", {**recorded, "learning_rate": 1e-3, "max_steps": 8})
    assert str(err.value) == (f"checkpoint {tmp_path / 'checkpoint-4'} was made with other settings "
                              "(--learning-rate: 0.0002 -> 0.001): resume it with its settings, or start afresh "
                              "with --resume none, or give another --output-dir") and counter.step == 0
    assert resume_checkpoint(accelerator, tmp_path, "latest", {**recorded, "max_steps": 8, "eval_every": 0})
    assert counter.step == 4
    assert "changed settings that may change on a resume: --eval-every: 2 -> 0; --max-steps: 4 -> 8" in \
        capsys.readouterr().out
    (tmp_path / "checkpoint-4" / "run_settings.json").unlink()  # made before settings were recorded
    assert resume_checkpoint(accelerator, tmp_path, "latest", {"seed": 1}) == tmp_path / "checkpoint-4"
    assert "records no settings (made before they were recorded); resuming without checking" in \
        capsys.readouterr().err
