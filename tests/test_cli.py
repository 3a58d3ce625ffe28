"""`python -m rglcd`: generate and score on the committed emoji-64 family, and one-line errors for bad input (also
from the train/ entry points)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
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
    label, _, value = stdout.strip().rpartition(": ")
    assert label == "emoji reward (100 x cosine)" and -100 <= float(value) <= 100


def test_num_images_makes_a_grid(tmp_path, capsys):
    out = tmp_path / "grid.png"
    code, _, err = run_main(GEN + ["--steps", "2", "--num-images", "3", "--out", str(out)], capsys)
    assert code == 0, err
    w, h = Image.open(out).size
    assert w > 3 * 64 and h > 64
    code, stdout, err = run_main(["score", "--prompt", "red apple", "--image", str(out)], capsys)
    assert code == 0, err
    assert ", 3 grid tiles in order: " in stdout


def score(image: Path, prompt: str, capsys) -> tuple[list[float], str]:
    """The scores `python -m rglcd score` prints for an image (one, or one per grid tile) and its stderr."""
    code, stdout, err = run_main(["score", "--prompt", prompt, "--image", str(image)], capsys)
    assert code == 0, err
    assert stdout.startswith("emoji reward (100 x cosine)"), stdout
    values = stdout.split(": ", 1)[1].split(" (mean")[0]
    return [float(v) for v in values.split()], err


def renders(chars: str) -> torch.Tensor:
    """(N,3,64,64) in [0,1]: the training renders of the emoji `chars` (glyphs on white)."""
    from rglcd.data.emoji import render

    return torch.stack([torch.from_numpy(render(c, 64).copy()).permute(2, 0, 1).float() / 255 for c in chars])


def test_grid_is_scored_tile_by_tile(tmp_path, capsys):
    """A grid as generate writes it (rglcd.images.save_grid) scores as its tiles do, each alone."""
    from rglcd.images import save_grid
    from rglcd.models import load_family

    tiles = renders("🍕🍎🐶🚀")
    save_grid(tiles, tmp_path / "grid.png", nrow=4)
    with torch.no_grad():
        singles = load_family("emoji-64").reward()(tiles, ["pizza"] * 4).tolist()
    save_grid(tiles[:1], tmp_path / "pizza.png")
    assert score(tmp_path / "pizza.png", "pizza", capsys)[0] == pytest.approx(singles[:1], abs=2e-3)
    assert score(tmp_path / "grid.png", "pizza", capsys)[0] == pytest.approx(singles, abs=2e-3)
    assert singles[0] > 20 and singles[0] == max(singles)


def test_transparent_background_scores_as_on_white(tmp_path, capsys):
    """An RGBA emoji on a transparent background (black hidden under it) scores as the same emoji on white."""
    on_white = (renders("🍕")[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    Image.fromarray(on_white).save(tmp_path / "white.png")
    alpha = np.where((on_white == 255).all(-1), 0, 255).astype(np.uint8)
    rgba = np.concatenate([np.where(alpha[..., None] == 0, 0, on_white), alpha[..., None]], -1).astype(np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "transparent.png")
    white = score(tmp_path / "white.png", "pizza", capsys)[0]
    assert white[0] > 20
    assert score(tmp_path / "transparent.png", "pizza", capsys)[0] == pytest.approx(white, abs=2e-3)


def test_emoji_in_a_prompt_are_read_as_their_names(tmp_path, capsys, monkeypatch):
    """'🍕' reaches the text encoder as 'pizza' (not [UNK]), with a notice; a prompt without emoji is read as
    given; most words unknown gives a notice."""
    import rglcd.__main__ as cli
    from rglcd.models import load_family
    from rglcd.sampling import PromptReading, read_prompt

    seen: list[str] = []

    def spied_family(name: str):
        family = load_family(name)
        family.text_encoder.register_forward_pre_hook(
            lambda _, args: seen.extend(family.tokenizer.batch_decode(args[0], skip_special_tokens=True)))
        return family

    monkeypatch.setattr(cli, "load_family", spied_family)
    code, _, err = run_main(GEN + ["--prompt", "🍕", "--steps", "1", "--out", str(tmp_path / "p.png")], capsys)
    assert code == 0, err
    assert "pizza" in seen and not any("[UNK]" in s for s in seen)
    assert err.strip() == "note: emoji read as their names: '🍕' -> 'pizza'"
    tokenizer = load_family("emoji-64").tokenizer
    assert read_prompt(tokenizer, "a 🐶 on  grass").text == "a dog face on grass"
    assert read_prompt(tokenizer, "red  apple") == PromptReading("red  apple", ())
    assert "2 of the prompt's 3 words are unknown" in read_prompt(tokenizer, "ᚠᚢᚦ ᚨ cat").notices[0]


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
    (["--report-to", "mlflowz"], "error: --report-to must be one of tensorboard, wandb, all, none, got 'mlflowz'"),
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
