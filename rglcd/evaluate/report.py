"""The evaluator's outputs: the results table and the paired table (markdown), results.csv, results.md with its
notes, and the plots (reward-vs-steps, quality-vs-latency, samples)."""

from __future__ import annotations

import csv
import os
import platform
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import torch

from rglcd.evaluate.generate import SEED_STRIDE
from rglcd.evaluate.score import FD_EFFNET, family_reward_names
from rglcd.images import image_grid


def percent(key: str) -> bool:
    return key.startswith(("pf_", "hf_"))


def format_cell(row: dict[str, Any], key: str, sign: str = "") -> str:
    """'12.3 ± 0.4' (percent for prompt following and high-frequency share, the latter to 2 decimals; sign="+"
    writes '+1.2'), '' when the row lacks the metric."""
    if key not in row or row[key] == "":
        return ""
    scale, digits = (100 if percent(key) else 1), (2 if key.startswith("hf_") else 1)
    value, half = row[key] * scale, row.get(f"{key}_ci95", float("nan")) * scale
    return f"{value:{sign}.{digits}f}" if np.isnan(half) else f"{value:{sign}.{digits}f} ± {half:.{digits}f}"


def metric_columns(rows: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(key, header) of the metric columns present in the rows, rewards first."""
    keys = [k for k in rows[0] if k.startswith("reward_") and not k.endswith(("_ci95", "_vs_base"))]
    cols = [(k, f"{k[len('reward_'):]} reward") for k in keys]
    cols += [("pf_win", "prompt following win rate (%)"), ("pf_top1", "prompt following top-1 (%)")]
    if any("hf_share" in r for r in rows):
        cols.append(("hf_share", "high-frequency share (%)"))
    if any("fd" in r for r in rows):
        cols.append(("fd", FD_EFFNET))
    return cols


def results_table(rows: list[dict[str, Any]]) -> str:
    """The results as one markdown table: model, steps, guidance, NFE, s/image, then every metric ± 95% CI."""
    cols = metric_columns(rows)
    head = ["model", "steps", "guidance", "NFE", "s / image"] + [h for _, h in cols]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [row["model"], str(row["steps"]), f"{row['guidance']:g}" if row["guidance"] != "" else "",
                 f"{row['nfe']:g}" if "nfe" in row else "",
                 f"{row['seconds_per_image']:.4f}" if "seconds_per_image" in row else ""]
        lines.append("| " + " | ".join(cells + [format_cell(row, k) for k, _ in cols]) + " |")
    return "\n".join(lines)


def phrasing_table(runs: dict[str, list[torch.Tensor]], phrasings: list[str]) -> str:
    """Markdown: each run's mean reward over the prompts of each phrasing. `runs`: label -> per-seed rewards (N,)
    of the N prompts, `phrasings[i]` the phrasing of prompt i."""
    order = list(dict.fromkeys(phrasings))
    lines = ["| model | " + " | ".join(f"`{p}`" for p in order) + " |", "|---" * (len(order) + 1) + "|"]
    for label, per_seed in runs.items():
        per_prompt = torch.stack(per_seed).float().mean(0)
        means = [per_prompt[[i for i, q in enumerate(phrasings) if q == p]].mean().item() for p in order]
        lines.append(f"| {label} | " + " | ".join(f"{m:.1f}" for m in means) + " |")
    return "\n".join(lines)


def paired_table(rows: list[dict[str, Any]]) -> str:
    """Paired differences against the baseline run (rows that have them), '' when there are none."""
    paired = [r for r in rows if "baseline" in r]
    if not paired:
        return ""
    keys = [k[:-len("_vs_base")] for k in paired[0] if k.endswith("_vs_base")]
    head = ["model", "steps"] + [f"{h} - {paired[0]['baseline']}" for k, h in metric_columns(rows) if k in keys]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in paired:
        cells = [row["model"], str(row["steps"])] + [format_cell(row, f"{k}_vs_base", "+") for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def machine_description(device: str) -> str:
    """'2-core CPU (x86_64), torch 2.13.0+cpu, 1 thread' or the GPU name."""
    if device.startswith("cuda"):
        return f"{torch.cuda.get_device_name()} (torch {torch.__version__})"
    threads = torch.get_num_threads()
    return (f"{os.cpu_count()}-core CPU ({platform.machine()}), torch {torch.__version__}, "
            f"{threads} thread{'s' if threads > 1 else ''}")


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    keys = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)


def split_note(prompt_set: str) -> str:
    """Which held-out half a table is from and what it may be used for (every results.md says it)."""
    free = " under evaluation-only phrasings no training run used" if prompt_set.endswith("-free") else ""
    if prompt_set.startswith("heldout-val"):
        return f"validation half of the held-out concepts{free}: choices (recipe, beta, checkpoint) are made here."
    if prompt_set.startswith("heldout-test"):
        return f"test half of the held-out concepts{free}: reported once per shipped model, never chosen on."
    if prompt_set == "heldout":
        return "all 217 held-out concepts (both halves: not a clean test of any choice made on them)."
    return f"`{prompt_set}` (not a held-out split)."


def student_guidance_note(guidance: float | None) -> str:
    """How the students were guided: the `--guidance` given, or each member's own (the guidance column)."""
    if guidance is None:
        return ("each member's own guidance scale, else 5 (the guidance column; a guidance embedding reads w = "
                "guidance - 1)")
    return f"{guidance:g} (LCM guidance embedding w = {guidance - 1:g})"


def write_markdown(ev: Any, rows: list[dict[str, Any]], path: Path, reference: str | None,
                   command: str) -> None:
    """results.md of an evaluation `ev` (an `rglcd.evaluate.harness.Evaluation`, which imports this module)."""
    cfg, ps = ev.cfg, ev.prompt_set
    seeds = ", ".join(map(str, cfg.seeds))
    notes = [
        f"# {ev.family.name}: {', '.join(dict.fromkeys(r.model for r in ev.runs))} on `{ps.name}`",
        "",
        f"- Command: `{command}`",
        f"- Date: {date.today().isoformat()}; machine: {machine_description(cfg.device)}.",
        f"- Prompts: {len(ps.prompts)} from {ps.source}; seeds {seeds} (one image per prompt and seed: "
        f"{len(ps.prompts) * len(cfg.seeds)} images per row; image i of seed s uses seed s x {SEED_STRIDE} + i).",
        f"- Split: {split_note(ps.name)}",
        f"- Guidance: teachers {cfg.teacher_guidance:g} (classifier-free, 2 UNet evaluations per step), students "
        f"{student_guidance_note(cfg.guidance)}. NFE: UNet evaluations per image.",
        f"- s / image: latency, the median of {cfg.latency_repeats} timed diffusers pipeline calls of "
        f"{cfg.latency_batch} images (text encoding and VAE decoding included, after a warm-up call), per image, "
        f"{cfg.device} {cfg.dtype}; results.csv also has the mean time per image of the generation itself "
        f"(batch {cfg.batch_size}).",
        *(["- Scored against: each image's bare concept name, not the prompt it was made from "
           "(`--score-text name`): the images are those of the prompts, the texts the rewards read are the names."]
          if cfg.score_text == "name" else []),
        "- Rewards: mean own-prompt score (the family's reward; emoji: 100 x cosine). Prompt following: for each "
        "image, the share of the other prompts " + (f"of its group of {cfg.pf_group}" if cfg.pf_group else
                                                    f"of the set ({len(ps.prompts) - 1})")
        + " that the family reward scores lower than its own prompt (win rate), and the share of images whose "
          "own prompt scores highest (top-1).",
        "- High-frequency share: the share of each image's spectral energy (channel means removed) above 0.25 "
        "cycles/pixel (`rglcd.metrics.high_frequency_energy`), a reward-hacking symptom: adversarial patterns "
        "raise it.",
        f"- {FD_EFFNET}: Frechet distance between Gaussians fitted to ImageNet EfficientNet-Lite0 pooled features "
        f"(1280-d, 224 px) of the generated images and of {reference or 'no reference (not computed)'}; not FID "
        "(not Inception features), and biased upward when the image count is below the feature dimension, so "
        "compare it only between rows of one table.",
        f"- ± : 95% confidence half-widths over prompts (normal approximation of each prompt's mean over seeds); for "
        f"{FD_EFFNET} a normal bootstrap over prompts ({cfg.bootstrap} resamples, reference fixed).",
        "",
        results_table(rows),
        "",
    ]
    paired = paired_table(rows)
    if paired:
        base = next(r["baseline"] for r in rows if "baseline" in r)
        notes += [f"Paired differences against {base}: each prompt's mean over "
                  "seeds minus the baseline's on the same prompt, averaged over prompts, with 95% half-widths of "
                  "those differences.", "", paired, ""]
    if ps.phrasings and ev.per_run:
        name = family_reward_names(ev.family, cfg.rewards)[0]
        runs = {f"{run.model} {run.steps}": [s[f"reward_{name}"] for s in per_seed]
                for run, per_seed in ev.per_run.items()}
        notes += [f"{name} reward by phrasing (the prompts of each phrasing, mean over seeds):", "",
                  phrasing_table(runs, ps.phrasings), ""]
    path.write_text("\n".join(notes))


def plot_results(rows: list[dict[str, Any]], out: Path, main_reward: str) -> list[Path]:
    """reward-vs-steps.png (reward, prompt following, FD against steps) and quality-vs-latency.png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, NullFormatter

    models = [r for r in rows if r["kind"] != "real"]
    reference = next((r for r in rows if r["kind"] == "real"), None)
    panels = [(f"reward_{main_reward}", f"{main_reward} reward"), ("pf_win", "prompt following win rate (%)")]
    if any("fd" in r for r in models):
        panels.append(("fd", f"{FD_EFFNET} (lower is better)"))

    def series(key: str, x_key: str) -> Iterator[tuple[str, list, list, list, list]]:
        for model in dict.fromkeys(r["model"] for r in models):
            pts = sorted((r for r in models if r["model"] == model), key=lambda r: r[x_key])
            scale = 100 if percent(key) else 1
            yield (model, [r[x_key] for r in pts], [r[key] * scale for r in pts],
                   [r[f"{key}_ci95"] * scale for r in pts], [r["steps"] for r in pts])

    paths = []
    for name, x_key, x_label in (("reward-vs-steps.png", "steps", "sampling steps"),
                                 ("quality-vs-latency.png", "seconds_per_image", "seconds per image")):
        fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6))
        for ax, (key, title) in zip(np.atleast_1d(axes), panels):
            for model, xs, ys, errs, steps in series(key, x_key):
                ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, label=model)
                if x_key != "steps":
                    for x, y, k in zip(xs, ys, steps):
                        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            if reference is not None and key in reference:
                ax.axhline(reference[key] * (100 if percent(key) else 1), color="grey", ls="--", lw=1,
                           label="real images")
            ax.set_xscale("log", base=2 if x_key == "steps" else 10)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            if x_key == "steps":
                ax.set_xticks(sorted({r["steps"] for r in models}), [str(s) for s in sorted({r["steps"]
                                                                                                for r in models})])
            ax.set_xlabel(x_label + (" (labels: steps)" if x_key != "steps" else ""))
            ax.set_title(title, fontsize=10)
            ax.grid(alpha=0.3)
        np.atleast_1d(axes)[0].legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=120)
        plt.close(fig)
        paths.append(out / name)
    return paths


def plot_samples(sample_rows: list[tuple[str, torch.Tensor]], prompts: list[str], path: Path) -> Path:
    """One labelled grid: a row of images per (model, steps), a column per prompt."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(sample_rows[0][1])
    grid = image_grid(torch.cat([imgs.float() / 255 for _, imgs in sample_rows]), nrow=k, pad=2)
    cell = grid.shape[0] / len(sample_rows)
    fig, ax = plt.subplots(figsize=(1.0 + grid.shape[1] / 80, grid.shape[0] / 80))
    ax.imshow(grid)
    ax.set_yticks([cell * (i + 0.5) for i in range(len(sample_rows))], [label for label, _ in sample_rows],
                  fontsize=7)
    ax.set_xticks([grid.shape[1] / k * (j + 0.5) for j in range(k)], prompts[:k], fontsize=6, rotation=30,
                  ha="right")
    ax.tick_params(length=0)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
