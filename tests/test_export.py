"""Trainers never write into assets/ unless told (`--replace-shipped`): by default a member exports to
runs/<family>/<member> and registers in runs/<family>/family.json, a copy of the shipped file that still loads the
shipped parts."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest

import rglcd.training.export as export_module
from rglcd.models import load_family
from rglcd.training.distill import DistillConfig, train_distill
from rglcd.training.export import export_plan
from tests.entry_points import run_entry_point

ROOT = Path(__file__).resolve().parents[1]


def tree_digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder`, by relative path."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture()
def shipped_family(family_with_teacher: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The tiny family placed in a stand-in `assets/` folder (the module's idea of shipped), cwd a fresh folder."""
    assets = tmp_path / "repo" / "assets"
    family = assets / "models" / "tiny"
    shutil.copytree(family_with_teacher, family)
    monkeypatch.setattr(export_module, "ASSETS", assets)
    monkeypatch.chdir(tmp_path / "repo")
    return family


def test_default_export_goes_to_runs_and_leaves_shipped_files_identical(shipped_family: Path) -> None:
    before = tree_digest(shipped_family.parent.parent)
    train_distill(DistillConfig.of(family=str(shipped_family), output_dir="runs/tiny/lcm-run", batch_size=2, max_steps=2,
                                warmup_steps=1, checkpoint_every=2, eval_every=0, limit_concepts=8, report_to="none"))
    assert tree_digest(shipped_family.parent.parent) == before
    runs = Path("runs/tiny-emoji")
    spec = json.loads((runs / "family.json").read_text())
    assert spec["vae"] == "../../assets/models/tiny/vae" and spec["members"]["lcm"] == {"unet": "lcm", "kind": "lcm"}
    assert spec["members"]["teacher"]["unet"] == "../../assets/models/tiny/teacher"
    family = load_family(str(runs))
    assert family.pipeline("lcm").unet.config.time_cond_proj_dim == 256  # the new member and the shipped parts load
    assert (runs / "lcm" / "metrics.json").is_file()


def test_assets_only_with_replace_shipped(shipped_family: Path) -> None:
    family = load_family(str(shipped_family))
    with pytest.raises(ValueError, match="inside assets/.*--replace-shipped"):
        export_plan(str(shipped_family / "lcm"), family, "lcm")
    assert not Path("runs").exists(), "a refused export writes nothing"
    export, registry = export_plan("auto", family, "lcm", replace_shipped=True)
    assert (export, registry) == (shipped_family / "lcm", shipped_family / "family.json")
    own = Path("elsewhere")
    shutil.copytree(shipped_family, own)
    export, registry = export_plan("auto", load_family(str(own)), "lcm")
    assert (export, registry) == (own / "lcm", own / "family.json"), "a family outside assets/ is its own registry"
    assert export_plan(None, family, "lcm") == (None, None)


def test_distill_entry_point_refuses_assets_before_any_work(tmp_path: Path) -> None:
    code, _, err = run_entry_point(ROOT / "train" / "distill.py", [
        "--export-dir", str(ROOT / "assets" / "models" / "emoji-64" / "lcm"), "--output-dir", str(tmp_path / "o")],
        cwd=tmp_path)
    assert code == 2
    assert err.strip().splitlines() == [
        f"error: {ROOT / 'assets/models/emoji-64/lcm'} is inside assets/ (the shipped models): pass --replace-shipped "
        "to overwrite a shipped model, or leave --export-dir out to export under runs/"]
    assert not (tmp_path / "o").exists() and not (tmp_path / "runs").exists()


def test_distill_with_defaults_leaves_assets_byte_identical(tmp_path: Path) -> None:
    """`python train/distill.py --max-steps 2` on the shipped emoji-64 (a small batch, few concepts, no evaluation)."""
    before = tree_digest(ROOT / "assets")
    code, _, err = run_entry_point(ROOT / "train" / "distill.py", [
        "--max-steps", "2", "--batch-size", "2", "--limit-concepts", "8", "--eval-every", "0", "--report-to", "none",
        "--threads", "1"], cwd=tmp_path)
    assert code == 0, err[-2000:]
    assert tree_digest(ROOT / "assets") == before
    family = load_family(str(tmp_path / "runs" / "emoji-64"))
    assert family.member("lcm") == {"unet": "lcm", "kind": "lcm"}
    assert Path(family.source("vae").location).resolve() == (ROOT / "assets/models/emoji-64/vae").resolve()


def test_copy_family_command(tmp_path: Path, capsys) -> None:
    from rglcd.training.export import main

    folder = tmp_path / "runs" / "emoji-64" / "ablations"
    assert main(["emoji-64", str(folder)]) == 0
    family = load_family(str(folder))
    assert family.members == load_family("emoji-64").members
    assert Path(family.source("vae").location).resolve() == (ROOT / "assets/models/emoji-64/vae").resolve()
    for argv, message in ([["emoji-64", str(folder)], "family.json exists already"],
                          [["emoji-64", str(ROOT / "assets" / "x")], "is inside assets/"],
                          [["nope", str(tmp_path / "n")], "unknown model family 'nope'"]):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2 and message in capsys.readouterr().err
