"""Per-image sampling latency of each student at 1, 2, 4, 8 steps against the teacher at 25 and 50 steps with
classifier-free guidance, as speed-up ratios (teacher seconds per image / student seconds per image).

    python bench/sampling_latency.py --family emoji-64 --threads 1                     # the embedded family, CPU
    python bench/sampling_latency.py --family emoji-64 --threads 1 --members teacher lcm --compile
    python bench/sampling_latency.py --full-size sd21-768 --device cuda --dtype bf16   # random SD2.1 shapes, GPU
    python bench/sampling_latency.py --full-size sd21-512 --device cuda --dtype bf16

Each point is the median of `--repeats` timed pipeline calls of `--batch-size` images after one warm-up call
(text encoding and VAE decoding included for families; full-size shapes take random text states, so the text
encoder is not timed there). Calls run under torch.inference_mode. `--compile` then times the same pipelines again
with torch.compile'd UNets, text encoder and VAE decoder (inductor, weights frozen as constants), in the same
process: `compiled` holds those timings and ratios, each member's speed-up from compiling, and the largest pixel
difference of its images from the eager ones (same seed; float noise). `ratio_4_steps`: teacher 50 steps over each
student at 4 steps. Writes bench/results/sampling-latency-<family or shape>-<device>.json.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

import torch

import full_size
from report import write_report

from rglcd.evaluate import image_generators, time_pipeline


def family_setups(family_name: str, batch: int) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """({member: pipeline}, {member: kind}, pipeline inputs) of a model family, prompts from the held-out set."""
    from rglcd.data.prompts import load_prompt_set
    from rglcd.models import load_family

    family = load_family(family_name)
    prompts = load_prompt_set("heldout", limit=batch).prompts
    kinds = {m: family.member(m).get("kind", m) for m in family.members}
    return {m: family.pipeline(m) for m in kinds}, kinds, {"prompt": prompts}


def full_size_setups(shape_name: str, batch: int, device: str, dtype: torch.dtype
                     ) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """The same for random-weight full-size pipelines (teacher and LCM)."""
    shape = full_size.SHAPES[shape_name]
    pipes = full_size.build_pipelines(shape, device, dtype)
    states = full_size.text_states(shape, batch, device, dtype)
    return pipes, {"teacher": "teacher", "lcm": "lcm"}, {"prompt_embeds": states,
                                                          "negative_prompt_embeds": torch.zeros_like(states)}


def compile_pipelines(pipes: dict[str, Any]) -> None:
    """Compile, in place, every pipeline's UNet and the (shared) text encoders' and VAE decoders' forward with
    inductor, weights frozen as constants; compilation happens on each pipeline's next call."""
    import torch._inductor.config

    torch._inductor.config.freezing = True
    done: set[int] = set()
    for pipe in pipes.values():
        pipe.unet = torch.compile(pipe.unet)
        for module in (getattr(pipe, "text_encoder", None), pipe.vae.decoder):
            if module is not None and id(module) not in done:
                module.forward = torch.compile(module.forward)
                done.add(id(module))


def time_members(pipes: dict[str, Any], kinds: dict[str, str], inputs: dict[str, Any], args: argparse.Namespace
                 ) -> dict[str, dict[str, dict[str, float]]]:
    """{member: {steps: time_pipeline(...)}}: teachers at --teacher-steps, students at --student-steps."""
    timings = {}
    for member, pipe in pipes.items():
        is_teacher = kinds[member] == "teacher"
        member_inputs = inputs if is_teacher else {k: v for k, v in inputs.items() if k != "negative_prompt_embeds"}
        timings[member] = {str(steps): time_pipeline(pipe, steps, args.guidance_scale, args.batch_size,
                                                     args.repeats, **member_inputs)
                           for steps in (args.teacher_steps if is_teacher else args.student_steps)}
        print(member, {k: round(v["seconds_per_image"], 4) for k, v in timings[member].items()}, flush=True)
    return timings


def speedups(timings: dict[str, dict[str, dict[str, float]]], kinds: dict[str, str]) -> dict[str, float]:
    """"<teacher> <steps> / <student> <steps>": teacher seconds per image over student seconds per image."""
    teachers = [m for m in timings if kinds[m] == "teacher"]
    return {f"{t} {ts} / {s} {ss}": round(tv["seconds_per_image"] / sv["seconds_per_image"], 2)
            for t in teachers for ts, tv in timings[t].items()
            for s in timings if s not in teachers for ss, sv in timings[s].items()}


def first_images(pipes: dict[str, Any], kinds: dict[str, str], inputs: dict[str, Any], args: argparse.Namespace
                 ) -> dict[str, torch.Tensor]:
    """Each member's images (B,3,H,W) in [0,1] at its first step count, seed 0, to compare eager and compiled."""
    out = {}
    for member, pipe in pipes.items():
        is_teacher = kinds[member] == "teacher"
        member_inputs = inputs if is_teacher else {k: v for k, v in inputs.items() if k != "negative_prompt_embeds"}
        steps = (args.teacher_steps if is_teacher else args.student_steps)[0]
        out[member] = pipe(num_inference_steps=steps, guidance_scale=args.guidance_scale, output_type="pt",
                           generator=image_generators(0, 0, args.batch_size), **member_inputs).images.float().cpu()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="emoji-64")
    parser.add_argument("--full-size", choices=sorted(full_size.SHAPES), default=None,
                        help="random-weight SD2.1-shaped models instead of a family")
    parser.add_argument("--student-steps", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--teacher-steps", type=int, nargs="+", default=[25, 50])
    parser.add_argument("--guidance-scale", type=float, default=5.0, help="teacher CFG and student w-embedding")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", choices=sorted(full_size.DTYPES), default="fp32")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--members", nargs="+", default=None, help="family members to time (default: all)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile'd UNets, text encoder and VAE decoder (same process)")
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/sampling-latency-*.json)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = full_size.DTYPES[args.dtype]
    load_at_start = os.getloadavg()[0]
    with torch.inference_mode():
        if args.full_size:
            pipes, kinds, inputs = full_size_setups(args.full_size, args.batch_size, args.device, dtype)
        else:
            pipes, kinds, inputs = family_setups(args.family, args.batch_size)
            pipes = {m: p.to(args.device, dtype) for m, p in pipes.items()}
        pipes = {m: p for m, p in pipes.items() if args.members is None or m in args.members}
        timings = time_members(pipes, kinds, inputs, args)
        compiled = None
        if args.compile:
            eager_images = first_images(pipes, kinds, inputs, args)
            compile_pipelines(pipes)
            compiled_images = first_images(pipes, kinds, inputs, args)  # compiles
            compiled_timings = time_members(pipes, kinds, inputs, args)
            compiled = {"what": "UNets, text encoder and VAE decoder torch.compile'd (inductor, frozen weights)",
                        "timings": compiled_timings, "speedup": speedups(compiled_timings, kinds),
                        "compile_speedup": {m: {n: round(timings[m][n]["seconds_per_image"]
                                                         / t["seconds_per_image"], 2) for n, t in steps.items()}
                                            for m, steps in compiled_timings.items()},
                        "max_abs_pixel_difference": {m: float((compiled_images[m] - eager_images[m]).abs().max())
                                                     for m in pipes}}
    ratios = {k: v for k, v in speedups(timings, kinds).items() if k.endswith(" 4") and " 50 / " in k}
    if compiled:
        compiled["ratio_4_steps"] = {k: v for k, v in compiled["speedup"].items() if k in ratios}
    write_report("sampling-latency", args, batch_size=args.batch_size, repeats=args.repeats,
                 guidance_scale=args.guidance_scale, load_average_1min={"start": round(load_at_start, 2),
                                                                        "end": round(os.getloadavg()[0], 2)},
                 ratio_4_steps=ratios, timings=timings, speedup=speedups(timings, kinds), compiled=compiled)

if __name__ == "__main__":
    main()
