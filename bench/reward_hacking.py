"""Reward-hacking diagnostic: own-prompt reward and high-frequency energy of each model's held-out images.

A student that hacks a differentiable reward raises its score with high-frequency patterns the reward's network
reads and people do not; the share of spectral energy above 0.25 cycles/pixel (`rglcd.metrics.high_frequency_energy`)
shows it, beside the reward itself. Compare RG-LCD at a large beta with the expert reward directly and with the
latent proxy RM (and the LCM / teacher for scale); the Frechet distance of the same members comes from
`python -m rglcd.evaluate`.

    python bench/reward_hacking.py --family runs/emoji-64/ablations --models rg-beta0.01-direct,rg-beta0.01-proxy
    python bench/reward_hacking.py --family emoji-64 --models teacher,lcm,rg-lcm

Writes bench/results/reward-hacking-<name>.json: per model mean reward and high-frequency share with 95% intervals
over prompts (217 held-out prompts, one image each, seed 0, 4 student steps / 25 teacher steps, guidance 5).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from rglcd.data.prompts import load_prompt_set
from rglcd.metrics import high_frequency_energy, normal_ci
from rglcd.models import load_family


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", default="emoji-64")
    parser.add_argument("--models", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--teacher-steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=5.0)
    parser.add_argument("--name", default=None, help="results file suffix (default: the models)")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    family = load_family(args.family)
    reward = family.reward()
    prompts = load_prompt_set("heldout").prompts
    out = {}
    for model in args.models.split(","):
        if model not in family.members:
            raise SystemExit(f"error: family {family.name} has no model {model!r}; it has {', '.join(family.members)}")
        teacher = family.sampler(model).teacher
        steps = args.teacher_steps if teacher else args.steps
        pipe = family.pipeline(model)
        images = torch.cat([pipe(prompts[i: i + 64], num_inference_steps=steps, guidance_scale=args.guidance,
                                 output_type="pt", generator=torch.Generator().manual_seed(i)).images.float()
                            for i in range(0, len(prompts), 64)])
        with torch.no_grad():
            r = reward(images, prompts)
        hf = high_frequency_energy(images)
        out[model] = {"steps": steps, "reward": r.mean().item(), "reward_ci95": normal_ci(r)[1],
                      "high_frequency_share": hf.mean().item(), "high_frequency_ci95": normal_ci(hf)[1]}
        print(model, json.dumps(out[model]), flush=True)
    name = args.name or args.models.replace(",", "-")
    path = Path(__file__).resolve().parent / "results" / f"reward-hacking-{name}.json"
    path.write_text(json.dumps({"command": " ".join(sys.argv), "family": args.family, "prompts": len(prompts),
                                "guidance": args.guidance, "results": out}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
