"""`python -m rglcd`: generate and score on the committed emoji-64 family, and one-line errors for bad input (also
from the train/ entry points)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from rglcd.__main__ import main
from rglcd.models import PRESETS
from tests.entry_points import run_entry_point

GEN = ["generate", "--family", "emoji-64", "--model", "teacher", "--prompt", "red apple", "--seed", "0"]


def run_main(argv, capsys):
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_generate_and_score(tmp_path, capsys):
    out = tmp_path / "apple.png"
    code, stdout, err = run_main(GEN + ["--steps", "3", "--guidance-scale", "5", "--out", str(out)], capsys)
    assert code == 0, err
    assert Image.open(out).size == (64, 64)
    code, stdout, err = run_main(["score", "--family", "emoji-64", "--prompt", "red apple", "--image", str(out)],
                                 capsys)
    assert code == 0, err
    assert -100 <= float(stdout.strip()) <= 100


def test_num_images_makes_a_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, _, err = run_main(GEN + ["--steps", "2", "--num-images", "3", "--out", str(out)], capsys)
    assert code == 0, err
    w, h = Image.open(out).size
    assert w > 3 * 64 and h > 64


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "steps (teacher) must be a whole number between 1 and 999, got '0'"),
    (["--steps", "1000"], "steps (teacher) must be a whole number between 1 and 999, got '1000'"),
    (["--model", "lcm", "--steps", "51"], "steps (lcm) must be a whole number between 1 and 50, got '51'"),
    (["--guidance-scale", "-1"], "guidance scale must be a number between 1 and 20"),
    (["--num-images", "0"], "number of images must be a whole number between 1 and 64"),
    (["--prompt", "apple " * 40], "prompt is too long"),
])
def test_out_of_range_requests(extra, message, tmp_path, capsys):
    code, _, err = run_main(GEN + extra + ["--out", str(tmp_path / "x.png")], capsys)
    assert code == 2
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_unknown_family_model_and_missing_image(tmp_path, capsys):
    code, _, err = run_main(["generate", "--family", "emoji-65", "--prompt", "x", "--out", "x.png"], capsys)
    assert code == 2 and "unknown model family 'emoji-65'" in err
    code, _, err = run_main(GEN + ["--model", "nope", "--out", str(tmp_path / "x.png")], capsys)
    assert code == 2 and "has no model 'nope'" in err
    code, _, err = run_main(["score", "--prompt", "x", "--image", str(tmp_path / "missing.png")], capsys)
    assert code == 2 and "image not found" in err
    (tmp_path / "bad.png").write_text("not a png")
    code, _, err = run_main(["score", "--prompt", "x", "--image", str(tmp_path / "bad.png")], capsys)
    assert code == 2 and "not an image file" in err


def test_module_entry_point_prints_one_line_error():
    code, _, err = run_entry_point("rglcd", ["generate", "--family", "nope", "--prompt", "x", "--out", "x.png"])
    assert code == 2
    presets = ", ".join(PRESETS)
    assert err.strip().splitlines() == [f"error: unknown model family 'nope': not a preset "
                                                f"({presets}) nor a family.json"]
    assert "emoji-64" in presets and "sdxl" in presets


@pytest.mark.parametrize("extra, message", [
    (["--family", "nope"], "error: unknown model family 'nope'"),
    (["--report-to", "mlflowz"], "error: unknown --report-to 'mlflowz'"),
])
def test_train_entry_point_prints_one_line_error(extra, message, tmp_path):
    root = Path(__file__).resolve().parents[1]
    code, _, err = run_entry_point(root / "train" / "distill.py", [
        "--config", str(root / "train" / "configs" / "emoji-64-lcd.yaml"), "--output-dir", str(tmp_path / "run"),
        *extra], cwd=root)
    assert code == 2, err
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith(message)


def test_report_to_none_from_the_command_line_means_no_tracker(tmp_path):
    from rglcd.training.cli_args import parse_config
    from rglcd.training.distill import DistillConfig
    from rglcd.training.tracking import make_accelerator

    cfg = parse_config(DistillConfig, argv=["--report-to", "none"])
    assert cfg.report_to is None  # the parser reads 'none' as None, which make_accelerator takes as no tracker
    assert make_accelerator(cfg.report_to, str(tmp_path)).log_with == []


def test_installed_package_runs_entry_points_from_any_directory(tmp_path):
    """requirements.txt installs rglcd editable (pyproject.toml): `python train/distill.py` and the `rglcd` script work
    from another directory without PYTHONPATH."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, str(root / "train" / "distill.py"), "--help"], capture_output=True,
                          text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert "--reward-scale" in proc.stdout
    script = Path(sys.executable).with_name("rglcd")
    proc = subprocess.run([str(script), "generate", "--family", "nope", "--prompt", "apple", "--out", "a.png"],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 2 and proc.stderr.startswith("error: unknown model family 'nope'"), proc.stderr
