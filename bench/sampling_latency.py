"""Per-image sampling latency of each student at 1, 2, 4, 8 steps against the teacher at 25 and 50 steps with
classifier-free guidance, as speed-up ratios (teacher seconds per image / student seconds per image).

    python bench/sampling_latency.py --family emoji-64 --threads 1                     # the embedded family, CPU
    python bench/sampling_latency.py --family emoji-64 --threads 1 --members teacher lcm --compile
    python bench/sampling_latency.py --full-size sd21-768 --device cuda --dtype bf16   # random SD2.1 shapes, GPU
    python bench/sampling_latency.py --full-size sd21-512 --device cuda --dtype bf16

Each point is the median of `--repeats` timed pipeline calls of `--batch-size` images after one warm-up call
(text encoding and VAE decoding included for families; full-size shapes take random text states, so the text
encoder is not timed there). Calls run under torch.inference_mode. `--compile` also times copies of the pipelines
with torch.compile'd UNets, text encoder and VAE decoder (inductor, weights frozen as constants), their calls taking
turns with the eager ones so that both see the same machine load: `compiled` holds those timings and ratios, each
member's speed-up from compiling, and the largest pixel difference of its images from the eager ones (same seed;
float noise). `ratio_4_steps`: teacher 50 steps over each
student at 4 steps. Writes bench/results/sampling-latency-<family or shape>-<device>.json.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import time
from typing import Any

import torch

import full_size
from report import write_report

from rglcd.evaluate import count_unet_evals, image_generators


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


def compiled_copies(pipes: dict[str, Any]) -> dict[str, Any]:
    """Copies of the pipelines whose UNets, text encoder and VAE decoder are torch.compile'd (inductor, weights frozen
    as constants; the VAE is a deep copy, the rest is shared with the eager ones). Compiled on their first call."""
    import torch._inductor.config

    torch._inductor.config.freezing = True
    shared: dict[int, Any] = {}

    def once(module: Any, make: Any) -> Any:
        return shared.setdefault(id(module), make(module)) if module is not None else None

    def compiled_vae(vae: Any) -> Any:
        vae = copy.deepcopy(vae)
        vae.decoder = torch.compile(vae.decoder)
        return vae

    out = {}
    for member, pipe in pipes.items():
        twin = copy.copy(pipe)
        twin.unet = torch.compile(pipe.unet)
        twin.text_encoder = once(getattr(pipe, "text_encoder", None), torch.compile)
        twin.vae = once(pipe.vae, compiled_vae)
        out[member] = twin
    return out


def inputs_of(kinds: dict[str, str], inputs: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each member's pipeline inputs: students take no negative prompt."""
    return {m: inputs if kind == "teacher" else {k: v for k, v in inputs.items() if k != "negative_prompt_embeds"}
            for m, kind in kinds.items()}


def call(pipe: Any, steps: int, seed: int, args: argparse.Namespace, inputs: dict[str, Any]) -> torch.Tensor:
    """One pipeline call of --batch-size images from `seed` (one generator per image): images (B,3,H,W) in [0,1]."""
    return pipe(num_inference_steps=steps, guidance_scale=args.guidance_scale, output_type="pt",
                generator=image_generators(seed, 0, args.batch_size), **inputs).images


def time_variants(variants: dict[str, dict[str, Any]], kinds: dict[str, str], inputs: dict[str, Any],
                  args: argparse.Namespace) -> dict[str, dict[str, dict[str, dict[str, Any]]]]:
    """{variant: {member: {steps: {seconds_per_image (median), runs_s_per_image, nfe, batch_size}}}}: teachers at
    --teacher-steps, students at --student-steps. After one untimed call each, the variants' calls take turns in
    each of --repeats rounds, so that a change of machine load falls on all of them alike."""
    plan = [(m, steps) for m in kinds if m in next(iter(variants.values()))
            for steps in (args.teacher_steps if kinds[m] == "teacher" else args.student_steps)]
    member_inputs = inputs_of(kinds, inputs)
    times: dict[tuple[str, str, int], list[float]] = {(v, m, n): [] for v in variants for m, n in plan}
    nfe: dict[tuple[str, str, int], int] = {}
    for v, pipes in variants.items():
        for m, n in plan:
            call(pipes[m], n, 0, args, member_inputs[m])
    for r in range(args.repeats):
        for m, n in plan:
            for v, pipes in variants.items():
                with count_unet_evals(pipes[m].unet) as counts:
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    call(pipes[m], n, r + 1, args, member_inputs[m])
                    if args.device.startswith("cuda"):
                        torch.cuda.synchronize()
                    times[v, m, n].append((time.perf_counter() - t0) / args.batch_size)
                nfe[v, m, n] = counts.samples / args.batch_size
    out: dict[str, dict[str, dict[str, dict[str, Any]]]] = {v: {} for v in variants}
    for (v, m, n), runs in times.items():
        out[v].setdefault(m, {})[str(n)] = {"seconds_per_image": statistics.median(runs),
                                            "runs_s_per_image": [round(t, 5) for t in runs], "nfe": nfe[v, m, n],
                                            "batch_size": args.batch_size}
    for v in variants:
        print(v, {m: {n: round(t["seconds_per_image"], 4) for n, t in ts.items()} for m, ts in out[v].items()},
              flush=True)
    return out


def speedups(timings: dict[str, dict[str, dict[str, float]]], kinds: dict[str, str]) -> dict[str, float]:
    """"<teacher> <steps> / <student> <steps>": teacher seconds per image over student seconds per image."""
    teachers = [m for m in timings if kinds[m] == "teacher"]
    return {f"{t} {ts} / {s} {ss}": round(tv["seconds_per_image"] / sv["seconds_per_image"], 2)
            for t in teachers for ts, tv in timings[t].items()
            for s in timings if s not in teachers for ss, sv in timings[s].items()}


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
        variants = {"eager": pipes}
        if args.compile:
            variants["compiled"] = compiled_copies(pipes)
        timed = time_variants(variants, kinds, inputs, args)
        timings, compiled = timed["eager"], None
        if args.compile:
            first = {m: int(next(iter(steps))) for m, steps in timings.items()}  # each member's first step count
            ins = inputs_of(kinds, inputs)
            difference = {m: float((call(variants["compiled"][m], n, 0, args, ins[m])
                                    - call(pipes[m], n, 0, args, ins[m])).abs().max()) for m, n in first.items()}
            compiled = {"what": "UNets, text encoder and VAE decoder torch.compile'd (inductor, frozen weights)",
                        "timings": timed["compiled"], "speedup": speedups(timed["compiled"], kinds),
                        "compile_speedup": {m: {n: round(timings[m][n]["seconds_per_image"]
                                                         / t["seconds_per_image"], 2) for n, t in steps.items()}
                                            for m, steps in timed["compiled"].items()},
                        "max_abs_pixel_difference": difference}
    ratios = {k: v for k, v in speedups(timings, kinds).items() if k.endswith(" 4") and " 50 / " in k}
    if compiled:
        compiled["ratio_4_steps"] = {k: v for k, v in compiled["speedup"].items() if k in ratios}
    write_report("sampling-latency", args, batch_size=args.batch_size, repeats=args.repeats,
                 guidance_scale=args.guidance_scale, load_average_1min={"start": round(load_at_start, 2),
                                                                        "end": round(os.getloadavg()[0], 2)},
                 ratio_4_steps=ratios, timings=timings, speedup=speedups(timings, kinds), compiled=compiled)

if __name__ == "__main__":
    main()
