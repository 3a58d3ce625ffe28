"""Every full-size training and sampling figure in one call, on random-weight SD2.1-768-shaped models (one GPU):

    python bench/full_size_suite.py --device cuda --out-dir $OUT                       # H100: about 2 minutes
    python bench/full_size_suite.py --device cpu --full-size tiny --out-dir /tmp/suite  # the same code on a CPU

Writes four JSON files into --out-dir (each written as soon as its part ends, so a later failure or time-out keeps
the earlier ones; a configuration that fails, e.g. out of memory, is recorded with its error and the rest go on):
1. train-vs-reference-<shape>-<device>.json: our LCD and LCD-LoRA step against diffusers' reference step,
   interleaved in one process (`train_vs_reference.compare`), batch `--batch-size`.
2. train-steps-<shape>-<device>.json: our step (`rglcd.training.step.distill_step`) for lcd, lcd-lora, rg-lcd
   (a random-weight CLIP ViT-H-14-shaped HPS-style reward on the VAE decode of the student's one-step prediction)
   and mlcm (4 segments), at batches `--batches`, with and without gradient checkpointing.
3. sampling-latency-<shape>-<device>.json: the teacher at 50 steps with CFG against the LCM at 4 steps (one image).
4. train-compile-<shape>-<device>.json (last; `--parts` chooses the parts): LCD with the UNets under
   `torch.compile`: the first step (compilation included) and the compiled step time against eager.
Memory figures are torch.cuda.max_memory_allocated during the timed steps, less the benchmark's own fp32 source
copy of the teacher (the models each step keeps are counted); on a CPU they are the process's peak RSS.
"""

from __future__ import annotations

import argparse
import gc
import time
from typing import Any

import torch

import full_size
import train_vs_reference as tvr
from report import write_report
from train_throughput import our_step, step_function, time_steps

from rglcd.evaluate import time_pipeline

PARTS = ("reference", "steps", "sampling", "compile")
VIT_H_14 = dict(  # open_clip ViT-H-14 (HPSv2.1's backbone) as transformers' CLIPConfig
    text_config=dict(hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=24,
                     max_position_embeddings=77, vocab_size=49408, hidden_act="gelu"),
    vision_config=dict(hidden_size=1280, intermediate_size=5120, num_attention_heads=16, num_hidden_layers=32,
                       image_size=224, patch_size=14, hidden_act="gelu"),
    projection_dim=1024)
TINY_CLIP = dict(text_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                                  max_position_embeddings=77, vocab_size=49408),
                 vision_config=dict(hidden_size=32, intermediate_size=64, num_attention_heads=2, num_hidden_layers=2,
                                    image_size=224, patch_size=14),
                 projection_dim=32)


class RandomTokens:
    """Stands in for the CLIP tokenizer (no hub): fixed random token ids per call, in ClipReward's calling form."""

    def __call__(self, prompts: list[str], max_length: int = 77, **_: Any) -> Any:
        from transformers import BatchEncoding

        g = torch.Generator().manual_seed(len(prompts))
        return BatchEncoding({"input_ids": torch.randint(0, 49408, (len(prompts), max_length), generator=g)})


def clip_reward_and_vae(shape_name: str, device: str, dtype: torch.dtype) -> tuple[Any, Any]:
    """(`clip_reward`, the shape's random SD VAE), frozen, in `dtype`: what RG-LCD's reward term runs."""
    with torch.device(device):
        vae = full_size.build_vae(full_size.SHAPES[shape_name]).requires_grad_(False)
    torch.nn.Module.to(vae, dtype)  # ModelMixin.to only adds a warning
    return clip_reward(shape_name, device, dtype), vae


def clip_reward(shape_name: str, device: str, dtype: torch.dtype) -> Any:
    """A frozen random-weight CLIP reward (HPS score: 100 x cosine) of ViT-H-14 shape (tiny for `tiny`)."""
    from transformers import CLIPConfig, CLIPModel

    from rglcd.rewards.clip import ClipReward

    config = CLIPConfig(**(TINY_CLIP if shape_name == "tiny" else VIT_H_14))
    with torch.device(device):
        model = CLIPModel(config).to(dtype)
    return ClipReward(model, RandomTokens(), "hps")


def free(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def source_bytes(setup: tvr.Setup) -> int:
    return sum(p.numel() * p.element_size() for p in setup.teacher.parameters())


def train_steps(args: argparse.Namespace, setup: tvr.Setup, dtype: torch.dtype) -> dict[str, Any]:
    """Our step per method x gradient checkpointing x batch (one build per method and checkpointing)."""
    results: dict[str, Any] = {}
    exclude = source_bytes(setup)
    reward = lambda: clip_reward_and_vae(args.full_size, args.device, dtype)  # noqa: E731
    for method in args.methods:
        for checkpointing in (False, True):
            accelerator = tvr.make_accelerator(args.device, args.dtype)
            side = None
            for batch in args.batches:
                name = f"{method} batch {batch}" + (" checkpointing" if checkpointing else "")
                config = {"method": method, "batch_size": batch, "gradient_checkpointing": checkpointing}
                try:
                    side = side or our_step(setup, method, accelerator, reward, gradient_checkpointing=checkpointing)
                    results[name] = config | time_steps(step_function(side, setup, batch, args.device), args.warmup,
                                                        args.steps, args.device, exclude)
                except Exception as err:  # noqa: BLE001 - e.g. out of memory: record it, go on
                    results[name] = config | {"error": f"{type(err).__name__}: {str(err)[:300]}"}
                    free(args.device)
                print(name, results[name], flush=True)
            del side
            accelerator.free_memory()
            free(args.device)
    return results


def compiled_lcd(args: argparse.Namespace, setup: tvr.Setup, dtype: torch.dtype) -> dict[str, Any]:
    """LCD with compiled UNets: first step (compilation) and median step, against the same step eager."""
    out: dict[str, Any] = {}
    for compiled in (False, True):
        accelerator = tvr.make_accelerator(args.device, args.dtype)
        try:
            side = our_step(setup, "lcd", accelerator, compile=compiled)
            stats = time_steps(step_function(side, setup, args.batch_size, args.device), 1, args.steps, args.device,
                               source_bytes(setup))
            out["compiled" if compiled else "eager"] = {"first_step_s": stats["step_s"][0], **stats}
            del side
        except Exception as err:  # noqa: BLE001
            out["compiled" if compiled else "eager"] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
        accelerator.free_memory()
        free(args.device)
    if "median_step_s" in out.get("compiled", {}) and "median_step_s" in out.get("eager", {}):
        out["compile_s"] = round(out["compiled"]["first_step_s"] - out["compiled"]["median_step_s"], 1)
        out["speedup"] = round(out["eager"]["median_step_s"] / out["compiled"]["median_step_s"], 3)
    return out


def sampling(args: argparse.Namespace, dtype: torch.dtype) -> dict[str, Any]:
    """Teacher 50 steps with CFG vs LCM 4 steps, one image, median of `--sampling-repeats` calls."""
    shape = full_size.SHAPES[args.full_size]
    with torch.no_grad():
        pipes = full_size.build_pipelines(shape, args.device, dtype)
        states = full_size.text_states(shape, 1, args.device, dtype)
        teacher = time_pipeline(pipes["teacher"], 50, 5.0, 1, args.sampling_repeats, prompt_embeds=states,
                                negative_prompt_embeds=torch.zeros_like(states))
        lcm = time_pipeline(pipes["lcm"], 4, 5.0, 1, args.sampling_repeats, prompt_embeds=states)
    del pipes
    free(args.device)
    return {"teacher 50 cfg": teacher, "lcm 4": lcm,
            "speedup": round(teacher["seconds_per_image"] / lcm["seconds_per_image"], 2)}


def report(args: argparse.Namespace, kind: str, **numbers: Any) -> None:
    out = vars(args) | {"out": f"{args.out_dir}/{kind}-{args.full_size}-{args.device.split(':')[0]}.json"}
    write_report(kind, argparse.Namespace(**out), **numbers)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out-dir", required=True)
    p.add_argument("--full-size", choices=sorted(full_size.SHAPES), default="sd21-768")
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtype", choices=sorted(tvr.MIXED_PRECISION), default="bf16")
    p.add_argument("--batch-size", type=int, default=4, help="train-vs-reference and compile batch")
    p.add_argument("--batches", type=int, nargs="+", default=[4, 8, 12], help="batches of the per-method table")
    p.add_argument("--methods", nargs="+", default=["lcd", "lcd-lora", "rg-lcd", "mlcm"])
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--reference-steps", type=int, default=5, help="timed steps of each side, train-vs-reference")
    p.add_argument("--sampling-repeats", type=int, default=2)
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS),
                   help="which files to write (the compile part alone takes about as long as the others together)")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.family = None
    dtype = full_size.DTYPES[args.dtype]
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    t_start = time.perf_counter()
    setup = tvr.build_setup(args.full_size, args.device)
    compare_args = argparse.Namespace(**vars(args) | dict(
        steps=args.reference_steps, warmup=2, memory_steps=2, channels_last=False, compile=False,
        gradient_checkpointing=False, teacher_autocast=None, family="emoji-64"))
    if "reference" in args.parts:
        vs = {}
        for variant, rank in (("lcd", 0), ("lcd-lora", tvr.LORA_RANK)):
            try:
                vs[variant] = tvr.compare(compare_args, rank, setup, exclude=source_bytes(setup))
            except Exception as err:  # noqa: BLE001
                vs[variant] = {"error": f"{type(err).__name__}: {str(err)[:300]}"}
            free(args.device)
            print(variant, vs[variant].get("ratio_ours_over_reference"), flush=True)
        report(args, "train-vs-reference", batch_size=args.batch_size, variants=vs,
               wall_s=round(time.perf_counter() - t_start, 1))
    if "steps" in args.parts:
        report(args, "train-steps", warmup=args.warmup, steps=args.steps, configs=train_steps(args, setup, dtype),
               wall_s=round(time.perf_counter() - t_start, 1))
    if "sampling" in args.parts:
        report(args, "sampling-latency", **sampling(args, dtype), wall_s=round(time.perf_counter() - t_start, 1))
    if "compile" in args.parts:
        report(args, "train-compile", batch_size=args.batch_size, **compiled_lcd(args, setup, dtype),
               wall_s=round(time.perf_counter() - t_start, 1))


if __name__ == "__main__":
    main()
