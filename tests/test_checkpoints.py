"""Checkpoints resume weights-only: a registered object's state holding anything but tensors and plain values is
refused instead of unpickled."""

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
