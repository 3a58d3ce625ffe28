"""Free text against bare names, concept by concept (`--paired-names`).

A phrased prompt set (`heldout-val-free`, `heldout-test-free`) phrases each concept of a half ("cat clipart"); the
same concepts, in the same order, are also generated from their bare names ("cat"). Per concept c, with f_c and
n_c its reward under the phrasing and under the name (each the mean over evaluation seeds), a model keeps

    share = mean_c f_c / mean_c n_c

of its names reward under free text. Its 95% interval is the delta-method (ratio-estimator) one,
share +- z * sd_c(f_c - share * n_c) / (sqrt(N) * mean_c n_c): paired per concept, so what makes a concept hard
for both prompts cancels, which two unpaired means do not allow. A target share (the issue's 85%: within 15%) is
'met' when the interval lies above it, 'short' when below, else 'not shown' ('n/a' when the names mean is not positive); a group of training seeds is 'met' or
'short' only when every member is. Pure functions on per-image scores; no I/O.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from rglcd.metrics import z_value
from rglcd.sampling import InputError

TARGET = 0.85  # issue 19: free-text reward within 15% of the names reward


@dataclass(frozen=True)
class Share:
    """One run's free-text share: the two means over concepts, share = free / names and its 95% half-width."""

    names: float
    free: float
    share: float
    ci95: float

    def verdict(self, target: float = TARGET) -> str:
        """'met' / 'short' when the interval lies above / below `target`, else 'not shown' ('n/a' without a share)."""
        if math.isnan(self.share):
            return "n/a"
        if self.share - self.ci95 > target:
            return "met"
        if self.share + self.ci95 < target:
            return "short"
        return "not shown"


def share_of_names(free: torch.Tensor, names: torch.Tensor, level: float = 0.95) -> Share:
    """The free-text share of (N,) per-concept rewards under the phrasing and under the bare name (same concepts,
    same order), with its paired delta-method interval; share and interval are nan when the names mean is not
    positive (a share of it means nothing). InputError when the shapes differ or N < 2."""
    f, n = free.double().flatten(), names.double().flatten()
    if f.shape != n.shape or f.numel() < 2:
        raise InputError(f"free and names rewards must be two (N,) tensors of one shape, N >= 2; got "
                         f"{tuple(free.shape)} and {tuple(names.shape)}")
    if n.mean() <= 0:
        return Share(n.mean().item(), f.mean().item(), math.nan, math.nan)
    share = f.mean() / n.mean()
    half = z_value(level) * (f - share * n).std() / (f.numel() ** 0.5 * n.mean())
    return Share(n.mean().item(), f.mean().item(), share.item(), half.item())


def group_verdict(shares: list[Share], target: float = TARGET) -> str:
    """'met' / 'short' when every training seed's share is, else 'not shown'."""
    verdicts = {s.verdict(target) for s in shares}
    return verdicts.pop() if len(verdicts) == 1 else "not shown"


def markdown(runs: dict[str, Share], groups: dict[str, list[str]], metric: str, target: float = TARGET) -> str:
    """The tables of `free-vs-names.md`: one row per run ('lcm 4'), and per seed group (name -> its runs) the
    members' shares, their mean and spread, and the group verdict."""
    def pct(v: float) -> str:
        return "n/a" if math.isnan(v) else f"{100 * v:.0f}%"

    lines = [f"## Free text against bare names: `{metric}`", "",
             f"| run | names | free text | free / names | 95% interval | {pct(target)} kept |", "|---|---|---|---|---|---|"]
    lines += [f"| {run} | {s.names:.1f} | {s.free:.1f} | {pct(s.share)} | "
              + ("n/a" if math.isnan(s.share) else f"{pct(s.share - s.ci95)} to {pct(s.share + s.ci95)}")
              + f" | {s.verdict(target)} |" for run, s in runs.items()]
    if groups:
        lines += ["", "Training-seed groups ('met' / 'short' only when every member's interval is):", "",
                  "| group | runs | per member | mean | spread | verdict |", "|---|---|---|---|---|---|"]
        for name, members in groups.items():
            shares = [runs[m] for m in members]
            values = [s.share for s in shares]
            lines.append(f"| {name} | {', '.join(members)} | {' / '.join(pct(v) for v in values)} | "
                         f"{pct(sum(values) / len(values))} | {100 * (max(values) - min(values)):.0f} points | "
                         f"{group_verdict(shares, target)} |")
    return "\n".join(lines) + "\n"
