"""Run from the repository root: python bench/paired_cross.py (needs the local evaluator caches; it reads them
under results/sentence-val/ and results/judge-wide-val/, and its tables are in results/sentence-val/NOTE.md).

Paired differences (per concept, mean over evaluation seeds 0, 1; 95% normal interval) between members of the
sentence family (`results/sentence-val/`) and of the tokens family (`results/judge-wide-val/`), evaluated on the same
109 validation concepts, prompts and seeds. names / free: the `heldout-val-free` caches, scores key 9a67d04f1ee8
(the names generation is the one with the higher emoji mean); free-by-name: the `heldout-val-free-by-name` caches,
key fb917e7e483a (the free-text images scored against the names).
"""
import glob

import torch

from rglcd.evaluate.seeds import per_prompt_mean
from rglcd.metrics import normal_ci

REWARDS = ["reward_emoji", "reward_emoji@runs/emoji-64-p12/judge-wide", "reward_emoji@runs/emoji-64-p12/judge-wide-s1"]
NEW, BASE = "results/sentence-val/heldout-val-free", "results/judge-wide-val/heldout-val-free"
PAIRS = [("teacher-sent", "teacher-wide", 50), ("teacher-sent2", "teacher-wide", 50),
         ("teacher-sent3", "teacher-wide", 50), ("lcm-sent3", "lcm-tw", 4), ("lcm-sent3-s1", "lcm-tw-s1", 4)]


def seeds(folder: str, model: str, steps: int, key: str) -> list[list[dict]]:
    return [[torch.load(f, weights_only=True) for f in sorted(glob.glob(
        f"{folder}/cache/{model}/steps{steps}-cfg5-seed{s}-*-scores-{key}.pt"))] for s in (0, 1)]


def load(folder: str, model: str, steps: int) -> dict[str, dict[str, torch.Tensor]]:
    both = seeds(folder, model, steps, "9a67d04f1ee8")
    by_name = seeds(folder + "-by-name", model, steps, "fb917e7e483a")
    assert all(len(d) == 2 for d in both) and all(len(d) == 1 for d in by_name), (model, steps)
    for d in both:
        d.sort(key=lambda x: -x["reward_emoji"].mean().item())
    kinds = {"names": [d[0] for d in both], "free": [d[1] for d in both], "free-by-name": [d[0] for d in by_name]}
    return {k: {r: per_prompt_mean(v, r) for r in REWARDS} for k, v in kinds.items()}


print("| new - base | images | " + " | ".join(r.removeprefix("reward_") for r in REWARDS) + " |")
print("|---|---|" + "---|" * len(REWARDS))
for new, base, steps in PAIRS:
    if not glob.glob(f"{NEW}/cache/{new}/steps{steps}-*"):
        continue
    a, b = load(NEW, new, steps), load(BASE, base, steps)
    for kind in a:
        cells = [f"{a[kind][r].mean():.1f} vs {b[kind][r].mean():.1f}: "
                 "{:+.1f} ± {:.1f}".format(*normal_ci(a[kind][r] - b[kind][r])) for r in REWARDS]
        print(f"| {new} - {base} ({steps} steps) | {kind} | " + " | ".join(cells) + " |")
