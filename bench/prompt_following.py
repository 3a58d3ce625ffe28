"""Prompt following of a family member on emoji-64's 16 training and 16 held-out evaluation prompts.

    python bench/prompt_following.py --model teacher --steps 50 --guidance-scale 5 --out-dir bench/results

Writes `<out-dir>/<family>-<model>-prompt-following.json` and sample grids beside it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rglcd.data.emoji import eval_prompt_sets, load_renders
from rglcd.evaluate import evaluate_prompt_following, prompt_following
from rglcd.models import load_family


def render_ceiling(reward) -> dict[str, float]:
    """prompt_following of the ground-truth renders of the evaluation prompts: what a perfect generator scores."""
    concepts, images = load_renders("all")
    index = {c.name: i for i, c in enumerate(concepts)}
    out = {}
    for split, prompts in eval_prompt_sets().items():
        x = images[[index[p] for p in prompts]].float() / 255
        out.update({f"{split}_{k}": v for k, v in prompt_following(reward, x, prompts).items()})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="emoji-64")
    parser.add_argument("--model", default="teacher")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out-dir", default="bench/results")
    parser.add_argument("--renders", action="store_true", help="score the OpenMoji renders themselves (ceiling)")
    args = parser.parse_args()
    family = load_family(args.family)
    reward = family.reward()
    out = Path(args.out_dir)
    if args.renders:
        print(json.dumps(render_ceiling(reward), indent=2))
        return
    stem = f"{family.name}-{args.model}"
    per_seed = []
    t0 = time.time()
    for seed in args.seeds:
        grid = out / f"{stem}-seed{seed}.png" if seed == args.seeds[0] else None
        per_seed.append(evaluate_prompt_following(family, args.model, reward, eval_prompt_sets(), args.steps,
                                                  args.guidance_scale, seed, grid))
    mean = {k: sum(r[k] for r in per_seed) / len(per_seed) for k in per_seed[0]}
    result = {"family": family.name, "model": args.model, "steps": args.steps, "guidance_scale": args.guidance_scale,
              "seeds": args.seeds, "mean": mean, "per_seed": per_seed, "wall_s": round(time.time() - t0, 1)}
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}-prompt-following.json").write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["mean"], indent=2))


if __name__ == "__main__":
    main()
