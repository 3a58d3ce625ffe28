"""Every bad input of the CLI and the trainers' command lines is one `error:` line on stderr and exit status 2,
found before any model is sampled or trained; nothing bad is echoed back in full. (The app and its API: test_app.)"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rglcd.__main__ import main
from rglcd.methods import Trainer, trainer_methods
from rglcd.training.cli_args import run_trainer
from rglcd.training.distill import DistillConfig, train_distill
from tests.entry_points import run_entry_point

ROOT = Path(__file__).resolve().parents[1]
GEN = ["generate", "--family", "emoji-64", "--prompt", "rocket"]


def one_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and len(lines[0]) < 250, err[-1000:]
    return lines[0]


@pytest.mark.parametrize("extra, message", [
    (["--steps", "1000"], "steps (teacher) must be a whole number between 1 and 999, got '1000'"),
    (["--model", "lcm", "--steps", "51"], "steps (lcm) must be a whole number between 1 and 50, got '51'"),
    (["--model", "ict", "--steps", "100"], "steps (cm) must be a whole number between 1 and 50"),
    (["--steps", "2.5"], "steps (teacher) must be a whole number"),
    (["--seed", str(2**64)], "seed must be a whole number between 0 and 4294967295, got '18446744073709551616'"),
    (["--seed", "9" * 400], "seed must be a whole number between 0 and 4294967295, got '99999999999999999999..."),
    (["--seed", "-1"], "seed must be a whole number between 0 and 4294967295, got '-1'"),
    (["--guidance-scale", "nan"], "guidance scale must be a number between 1 and 20, got 'nan'"),
    (["--guidance-scale", "1e400"], "guidance scale must be a number between 1 and 20, got '1e400'"),
    (["--num-images", "65"], "number of images must be a whole number between 1 and 64, got '65'"),
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "x" * 10_000], "the prompt is too long: 10000 characters, at most 500"),
    (["--prompt", "apple " * 40], "the prompt is too long: 42 tokens, the emoji-64 text encoder reads at most 32"),
    (["--model", "nope"], "has no model 'nope'"),
    (["--bogus", "1"], "unrecognized arguments: --bogus 1 (see python -m rglcd --help)"),
])
def test_generate_rejects_with_one_line(extra: list[str], message: str, tmp_path: Path, capsys) -> None:
    out = tmp_path / "x.png"
    code = main(GEN + ["--out", str(out)] + extra) if "--bogus" not in extra else _exit_code(GEN + ["--out", str(out)]
                                                                                              + extra)
    err = capsys.readouterr().err
    assert code == 2 and message in one_line(err)
    assert not out.exists()


def _exit_code(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return int(exc.value.code)


@pytest.mark.parametrize("out, message", [
    ("{tmp}", "is a folder: give a file name such as outputs/banana.png"),
    ("{tmp}/sub/", "is a folder"),
    ("{tmp}/apple", "needs an image extension (.png, .jpg, .jpeg, .webp)"),
    ("{tmp}/apple.txt", "needs an image extension"),
    ("{tmp}/a-file/apple.png", "cannot write under"),
    ("{tmp}/fifo.png", "is not a regular file: give a new file name"),
    ("/proc/apple.png", "'/proc/apple.png': cannot write under /proc (No such file or directory)"),  # root too
    ("/proc/self/new/apple.png", "cannot write under /proc/"),
])
def test_output_path_is_checked_before_any_work(out: str, message: str, tmp_path: Path, capsys) -> None:
    (tmp_path / "a-file").write_text("")
    os.mkfifo(tmp_path / "fifo.png")
    code = main(GEN + ["--steps", "999", "--out", out.format(tmp=tmp_path)])  # 999 steps would take a while
    assert code == 2 and message in one_line(capsys.readouterr().err)


def test_output_folders_are_created(tmp_path: Path, capsys) -> None:
    out = tmp_path / "outputs" / "rocket.png"
    assert main(GEN + ["--steps", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    assert out.is_file() and capsys.readouterr().err == ""


@pytest.mark.parametrize("extra, message", [
    (["--prompt", ""], "the prompt is empty"),
    (["--prompt", "apple " * 40], "the prompt is too long: 42 tokens"),
    (["--image", "{tmp}"], "image not found"),
    (["--image", "{tmp}/none.png"], "image not found"),
    (["--image", "{tmp}/text.png"], "not an image file"),
    (["--image", "{tmp}/bomb.png"], "image too large to score: {tmp}/bomb.png has over 178956970 pixels"),
    (["--family", "{tmp}/family.json"], "family file {tmp}/family.json is not valid JSON: Expecting"),
    (["--image", "{tmp}/bare-grid.png"], "{tmp}/bare-grid.png (266x68) looks like a grid without its layout: save each 64x64 tile"),
])
def test_score_rejects_with_one_line(extra: list[str], message: str, tmp_path: Path, capsys) -> None:
    from PIL import Image

    Image.new("RGB", (64, 64)).save(tmp_path / "black.png")
    (tmp_path / "text.png").write_text("not a png")
    (tmp_path / "bomb.png").write_bytes(png_header(30_000, 30_000))
    (tmp_path / "family.json").write_text('{"name": "emoji-64",')
    Image.new("RGB", (4 * 66 + 2, 68), "white").save(tmp_path / "bare-grid.png")  # a grid re-saved without layout
    argv = ["score", "--prompt", "rocket", "--image", str(tmp_path / "black.png")] + extra
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    assert message.format(tmp=tmp_path) in one_line(capsys.readouterr().err)


def png_header(width: int, height: int) -> bytes:
    """A PNG of a `width` x `height` grey image with no pixel data: enough for Pillow to read its size."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + \
        chunk(b"IEND", b"")


RECIPES = {
    "malformed.yaml": ("max_steps: [1,\n", "is not valid YAML (line 2)"),
    "list.yaml": ("- max_steps\n- 3\n", "must be a mapping of settings (key: value), got a list"),
    "scalar.yaml": ("just text\n", "must be a mapping of settings (key: value), got a str"),
    "unknown.yaml": ("max_stepz: 3\n", "unknown keys in {tmp}/unknown.yaml: max_stepz (see --help for the settings)"),
    "binary.yaml": (b"\xff\xfe\x00", "is not valid YAML"),
}


@pytest.mark.parametrize("argv, message", [
    (["--config", "{tmp}/missing.yaml"], "recipe not found: {tmp}/missing.yaml"),
    (["--config", "{tmp}"], "--config {tmp} is a folder: give a recipe file"),
    *[(["--config", "{tmp}/" + name], message) for name, (_, message) in RECIPES.items()],
    (["--max-stepz", "3"], "unrecognized arguments: --max-stepz 3"),
    (["--max-steps", "abc"], "argument --max-steps: invalid int value: 'abc'"),
    (["--replace-shipped", "maybe"], "argument --replace-shipped: expected true or false, got 'maybe'"),
    (["--config"], "argument --config: expected one argument"),
])
def test_trainer_flags_and_recipes_reject_with_one_line(argv: list[str], message: str, tmp_path: Path,
                                                        capsys) -> None:
    for name, (text, _) in RECIPES.items():
        (tmp_path / name).write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(SystemExit) as exc:
        run_trainer(train_distill, DistillConfig, argv=[a.format(tmp=tmp_path) for a in argv])
    assert exc.value.code == 2
    assert message.format(tmp=tmp_path) in one_line(capsys.readouterr().err)


def test_trainer_refuses_assets_without_replace_shipped(tmp_path: Path, capsys) -> None:
    code = run_trainer(train_distill, DistillConfig, argv=["--export-dir", "assets/models/emoji-64/lcm",
                                                           "--output-dir", str(tmp_path / "run")])
    assert code == 2 and "is inside assets/ (the shipped models): pass --replace-shipped" in one_line(
        capsys.readouterr().err)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, message", [
    (["--max-stepz", "3"], "error: unrecognized arguments: --max-stepz 3 (see distill.py --help)"),
    (["--config", "train"], "error: --config train is a folder: give a recipe file (train/configs/*.yaml)"),
])
def test_trainer_entry_point_one_line_exit_2(argv: list[str], message: str) -> None:
    code, _, err = run_entry_point(ROOT / "train" / "distill.py", argv, cwd=ROOT)
    assert code == 2 and err.strip().splitlines() == [message]


# each bad trainer value stops before the run writes anything; --stop-at 1 keeps a run short should one get through
SAFE = ["--output-dir", "{tmp}/run", "--export-dir", "{tmp}/export", "--stop-at", "1", "--eval-every", "0",
        "--limit-concepts", "4"]


@pytest.mark.parametrize("recipe, argv, message", [
    ("max_steps: 2.5\n", [], "max_steps in {tmp}/recipe.yaml must be a whole number >= 1, got 2.5"),
    ("max_steps: [1, 2]\n", [], "max_steps in {tmp}/recipe.yaml must be a whole number >= 1, got a list [1, 2]"),
    ("batch_size: -1\n", [], "batch_size in {tmp}/recipe.yaml must be a whole number >= 1, got -1"),
    ("method: [lcd]\n", [], "method in {tmp}/recipe.yaml must be one of " + ", ".join(trainer_methods(Trainer.DISTILL)) + ", got a list ['lcd']"),
    ("loss_type: l1\n", [], "loss_type in {tmp}/recipe.yaml must be one of huber, l2, got 'l1'"),
    (None, ["--checkpoint-every", "0"], "--checkpoint-every must be a whole number >= 1, got 0"),
    (None, ["--log-every", "0"], "--log-every must be a whole number >= 1, got 0"),
    (None, ["--batch-size", "0"], "--batch-size must be a whole number >= 1, got 0"),
    (None, ["--max-steps", "-5"], "--max-steps must be a whole number >= 1, got -5"),
    (None, ["--ema-decay", "5"], "--ema-decay must be a number between 0 and 1, got 5.0"),
    (None, ["--seed", "-1"], "--seed must be a whole number between 0 and 4294967295, got -1"),
    (None, ["--progressive", "8", "0"], "--progressive must be a list of whole numbers >= 1 (or none), got (8, 0)"),
    (None, ["--teacher", "nope"], "family emoji-64 has no model 'nope'"),
    (None, ["--resume", "{tmp}/no-checkpoint"], "checkpoint folder not found: {tmp}/no-checkpoint"),
    (None, ["--data", "no-such-data"], "unknown data source 'no-such-data'"),
    (None, ["--data", "tensors:{tmp}/none.pt"], "training tensors not found: {tmp}/none.pt"),
    (None, ["--data", "{tmp}/shards/{{00000..00003}}.tar"], "no shard matches '{tmp}/shards/{{00000..00003}}.tar'"),
    (None, ["--method", "ict", "--data", "{tmp}/none-*.tar"], "no shard matches '{tmp}/none-*.tar'"),
    (None, ["--method", "ict", "--batch-size", "0"], "--batch-size must be a whole number >= 1, got 0"),
    (None, ["--method", "ict", "--resume", "{tmp}/no-checkpoint"], "checkpoint folder not found"),
    (None, ["--method", "ict", "--data", "no-such-data"], "unknown data source"),
])
def test_trainer_values_checked_before_anything_is_written(recipe: str | None, argv: list[str], message: str,
                                                           tmp_path: Path) -> None:
    if recipe is not None:
        (tmp_path / "recipe.yaml").write_text(recipe)
        argv = ["--config", "{tmp}/recipe.yaml", *argv]
    args = [a.format(tmp=tmp_path) for a in SAFE + argv]
    code, _, err = run_entry_point(ROOT / "train" / "distill.py", args, cwd=ROOT)
    assert code == 2 and message.format(tmp=tmp_path) in one_line(err)
    assert not (tmp_path / "run").exists() and not (tmp_path / "export").exists()
    assert not list(tmp_path.rglob("events.out.tfevents*"))


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "-1"], "argument --seeds: expected whole numbers between 0 and 4294967295, got '-1'"),
    (["--seeds", "0,x"], "argument --seeds: expected whole numbers between 0 and 4294967295, got 'x'"),
    (["--steps", "0"], "argument --steps: expected whole numbers >= 1, got '0'"),
    (["--batch-size", "0"], "argument --batch-size: expected whole numbers >= 1, got '0'"),
    (["--bogus"], "unrecognized arguments: --bogus (see python -m rglcd.evaluate --help)"),
])
def test_evaluate_rejects_with_one_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    from rglcd.evaluate import main as evaluate

    with pytest.raises(SystemExit) as exc:
        evaluate(argv + ["--out", str(tmp_path / "eval")])
    assert exc.value.code == 2 and message in one_line(capsys.readouterr().err)
    assert not (tmp_path / "eval").exists()
