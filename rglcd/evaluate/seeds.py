"""Training-seed spread: one recipe trained at several seeds is a group of members; a comparison between two
groups is made once per training-seed pair, prompt by prompt, and called shown only when every pair agrees.

    python -m rglcd.evaluate ... --models teacher,lcm,lcm-s1,rg-lcm,rg-lcm-s1 \
        --seed-groups teacher=teacher lcm=lcm,lcm-s1 rg-lcm=rg-lcm,rg-lcm-s1 --compare rg-lcm:lcm rg-lcm:teacher

Pairs: members of two groups of equal size pair by position (seed i with seed i); a one-member group (a teacher)
pairs with each member of the other. A student group is compared at each student step count of the evaluation, a
teacher group at its largest step count. Pure functions on the harness's per-image scores; no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from rglcd.metrics import normal_ci
from rglcd.samplers import sampler
from rglcd.sampling import InputError


def per_prompt_mean(per_seed: list[dict[str, torch.Tensor]], key: str) -> torch.Tensor:
    """(N,) each prompt's mean of metric `key` over the evaluation seeds."""
    return torch.stack([s[key] for s in per_seed]).mean(0)


@dataclass(frozen=True)
class PairResult:
    """One training-seed pair of a comparison: (A member, B member), paired difference of A - B and its 95%
    half-width over prompts (each prompt's mean over the evaluation seeds)."""

    a: str
    b: str
    diff: float
    ci95: float


def parse_groups(specs: tuple[str, ...], models: list[str]) -> dict[str, tuple[str, ...]]:
    """{'lcm': ('lcm', 'lcm-s1'), ...} from 'NAME=member,member' specs; InputError for a bad spec, a repeated name or
    a member that is not evaluated."""
    groups: dict[str, tuple[str, ...]] = {}
    for spec in specs:
        name, sep, members = spec.partition("=")
        found = tuple(m.strip() for m in members.split(",") if m.strip())
        if not sep or not name.strip() or not found:
            raise InputError(f"--seed-groups takes NAME=member,member..., got {spec!r}")
        if name in groups:
            raise InputError(f"--seed-groups names {name!r} twice")
        missing = [m for m in found if m not in models]
        if missing:
            raise InputError(f"--seed-groups {name}: {', '.join(missing)} not among the evaluated models "
                             f"({', '.join(models)})")
        groups[name.strip()] = found
    return groups


def parse_pairs(specs: tuple[str, ...], groups: dict[str, tuple[str, ...]]) -> list[tuple[str, str]]:
    """[('rg-lcm', 'lcm'), ...] from 'A:B' specs naming two groups; InputError otherwise."""
    pairs = []
    for spec in specs:
        a, sep, b = spec.partition(":")
        if not sep or a not in groups or b not in groups or a == b:
            raise InputError(f"--compare takes A:B with two different --seed-groups names "
                             f"({', '.join(groups) or 'none given'}), got {spec!r}")
        pairs.append((a, b))
    return pairs


def member_pairs(a: tuple[str, ...], b: tuple[str, ...]) -> list[tuple[str, str]]:
    """Training-seed pairs of two groups: by position for equal sizes, a one-member group with each of the other's."""
    if len(a) == len(b):
        return list(zip(a, b))
    if len(a) == 1 or len(b) == 1:
        return [(x, y) for x in a for y in b]
    raise InputError(f"groups of {len(a)} and {len(b)} members cannot be paired: give equal sizes or one member")


def verdict(results: list[PairResult]) -> str:
    """'above' / 'below' when every pair's interval excludes 0 on that side, else 'not shown'."""
    if all(r.diff - r.ci95 > 0 for r in results):
        return "above"
    if all(r.diff + r.ci95 < 0 for r in results):
        return "below"
    return "not shown"


def compare(scores: dict[tuple[str, int], list[dict[str, torch.Tensor]]], kinds: dict[str, str],
            groups: dict[str, tuple[str, ...]], pairs: list[tuple[str, str]], student_steps: tuple[int, ...],
            metric: str) -> list[dict[str, Any]]:
    """One row per (comparison, student step count): the pairs' paired differences of `metric`, their mean and
    range, and the verdict. `scores[(model, steps)]`: per evaluation seed, per-image metrics (N,)."""
    def steps_of(model: str) -> list[int]:
        return sorted(s for m, s in scores if m == model)

    rows, done = [], set()
    for a, b in pairs:
        for s in student_steps:
            at = {}
            for model in set(groups[a]) | set(groups[b]):
                have = steps_of(model)
                at[model] = max(have) if sampler(kinds[model]).teacher else (s if s in have else None)
            key = (a, b, tuple(sorted(at.items(), key=str)))
            if any(v is None for v in at.values()) or key in done:  # two teacher groups: one row, not one a step
                continue
            done.add(key)
            results = []
            for x, y in member_pairs(groups[a], groups[b]):
                diff = per_prompt_mean(scores[(x, at[x])], metric) - per_prompt_mean(scores[(y, at[y])], metric)
                results.append(PairResult(x, y, *normal_ci(diff)))
            diffs = [r.diff for r in results]
            rows.append({"a": a, "b": b, "a_steps": sorted({at[m] for m in groups[a]}),
                         "b_steps": sorted({at[m] for m in groups[b]}), "pairs": results,
                         "mean": sum(diffs) / len(diffs), "min": min(diffs), "max": max(diffs),
                         "verdict": verdict(results)})
    return rows


def group_rows(scores: dict[tuple[str, int], list[dict[str, torch.Tensor]]], groups: dict[str, tuple[str, ...]],
               metric: str) -> list[dict[str, Any]]:
    """One row per (group, step count): each member's mean of `metric` over prompts and seeds, their mean and
    spread (max - min)."""
    rows = []
    for name, members in groups.items():
        for s in sorted({st for m, st in scores if m in members}):
            if not all((m, s) in scores for m in members):
                continue
            values = [per_prompt_mean(scores[(m, s)], metric).mean().item() for m in members]
            rows.append({"group": name, "steps": s, "members": list(members), "values": values,
                         "mean": sum(values) / len(values), "spread": max(values) - min(values)})
    return rows


def markdown(groups: list[dict[str, Any]], comparisons: list[dict[str, Any]], metric: str, scale: float = 1.0
             ) -> str:
    """The two tables of `seed-spread.md`."""
    def f(v: float) -> str:
        return f"{v * scale:.1f}"

    lines = [f"## Training-seed spread of `{metric}`", "",
             "| group | steps | members | per member | mean | spread (max - min) |", "|---|---|---|---|---|---|"]
    lines += [f"| {g['group']} | {g['steps']} | {', '.join(g['members'])} | {' / '.join(f(v) for v in g['values'])} "
              f"| {f(g['mean'])} | {f(g['spread'])} |" for g in groups]
    lines += ["", "Comparisons, one paired difference (A - B, 95% half-width over prompts) per training-seed pair; "
              "'above' / 'below' only when every pair's interval excludes 0 on that side:", "",
              "| A | B | steps (A / B) | per training-seed pair | mean | range | shown |", "|---|---|---|---|---|---|---|"]
    for c in comparisons:
        per = "; ".join(f"{p.a} - {p.b}: {f(p.diff)} ± {f(p.ci95)}" for p in c["pairs"])
        steps = f"{'/'.join(map(str, c['a_steps']))} / {'/'.join(map(str, c['b_steps']))}"
        lines.append(f"| {c['a']} | {c['b']} | {steps} | {per} | {f(c['mean'])} | {f(c['min'])} to {f(c['max'])} "
                     f"| {c['verdict']} |")
    return "\n".join(lines) + "\n"
