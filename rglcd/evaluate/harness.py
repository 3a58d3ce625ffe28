"""The evaluation harness: which (model, steps) runs a config asks for, generating and scoring each (run, seed)
through the cache, summaries with confidence intervals and paired differences, and every output written; plus
`evaluate_prompt_following`, the trainers' quick check of a model in training."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from rglcd.data.prompts import PromptSet, even_subset, load_prompt_set
from rglcd.evaluate.cache import cached, digest, member_fingerprint
from rglcd.evaluate.generate import DTYPES, generate_images, time_pipeline
from rglcd.evaluate import freetext, seeds as seed_spread
from rglcd.evaluate.seeds import per_prompt_mean
from rglcd.evaluate.report import plot_results, plot_samples, split_note, write_csv, write_markdown
from rglcd.evaluate.score import (FD_EFFNET, SCORES_VERSION, efficientnet_lite0_features, family_reward_names,
                                  family_rewards, iter_image_folder, prompt_following, score_images)
from rglcd.images import save_grid
from rglcd.metrics import FrechetReference, bootstrap_ci, normal_ci
from rglcd.models import ModelLoadError, load_family
from rglcd.rewards import weights_fingerprint
from rglcd.inputs import DEFAULT_GUIDANCE
from rglcd.samplers import MemberDefaults, sampler
from rglcd.sampling import InputError, Request, check_request, sampling_extras

FOLDER_PREP = "resize_and_crop"  # how reference folders are sized (in their cache key: crop-then-resize before)


@dataclass
class EvalConfig:
    """What `python -m rglcd.evaluate` evaluates; every field is a command-line flag."""

    family: str = "emoji-64"
    models: tuple[str, ...] = ()  # empty: every member of the family
    steps: tuple[int, ...] = (1, 2, 4, 8)
    teacher_steps: tuple[int, ...] = (25, 50)
    guidance: float | None = None  # students (guidance embedding: w = guidance - 1); None: each member's own, else 5
    teacher_guidance: float = 5.0  # classifier-free guidance of teachers
    prompts: str = "heldout"
    prompt_source: str | None = None
    max_prompts: int | None = None
    seeds: tuple[int, ...] = (0, 1)
    batch_size: int = 64
    reference: str | None = None  # folder of real images for the Frechet distance (default: the prompt set's own)
    rewards: tuple[str, ...] = ()  # registry rewards to report besides the family's
    pf_group: int = 0  # prompt following within groups of this many prompts (0: all prompts of the set)
    bootstrap: int = 200
    latency_batch: int = 8  # latency: median of `latency_repeats` calls of this many images
    latency_repeats: int = 5
    baseline: str | None = None  # "model:steps" for paired differences; default: the teacher at its most steps
    skip_missing: bool = False
    sample_prompts: int = 8
    seed_groups: tuple[str, ...] = ()  # "NAME=member,member": one recipe at several training seeds
    compare: tuple[str, ...] = ()  # "A:B" group pairs compared per training-seed pair (rglcd.evaluate.seeds)
    score_text: str = "prompt"  # rewards read each image's own prompt | "name": its concept's bare name (emoji sets)
    paired_names: bool = False  # phrased sets: also generate the bare names, write free-vs-names.md (freetext.py)
    out: str = "results"
    device: str = "cpu"
    dtype: str = "fp32"


@dataclass(frozen=True)
class Run:
    """One row of the results: a member sampled at one step count and guidance scale."""

    model: str
    kind: str
    steps: int
    guidance: float


SCORE_TEXTS = ("prompt", "name")


def score_texts(prompt_set: PromptSet, score_text: str) -> list[str]:
    """The texts the rewards score image i against: its own prompt, or (`name`) the bare concept name behind it, so
    that a phrasing's effect on the images is told apart from its effect on the reward's reading of the text."""
    if score_text not in SCORE_TEXTS:
        raise InputError(f"unknown --score-text {score_text!r}: use prompt or name")
    if score_text == "prompt":
        return prompt_set.prompts
    if prompt_set.names is None:
        raise InputError(f"--score-text name needs a prompt set of named concepts (the emoji sets, e.g. "
                         f"heldout-val-free); {prompt_set.name} has none")
    return prompt_set.names


def plan_runs(family: Any, cfg: EvalConfig) -> list[Run]:
    """The (model, steps) grid, checked: unknown members fail (or are skipped with a warning under
    `skip_missing`), step counts and guidance scales out of a member's range raise `InputError`."""
    runs = []
    for model in cfg.models or tuple(family.members):
        if model not in family.members and cfg.skip_missing:
            print(f"warning: family {family.name} has no model '{model}'; skipped", file=sys.stderr)
            continue
        entry = family.member(model)
        if "train" in entry:  # a member with no public checkpoint (real families): say how to get it
            message = f"family {family.name}: '{model}' is not published: train it with {entry['train']}"
            if cfg.models and not cfg.skip_missing:
                raise ModelLoadError(message)
            print(f"warning: {message}; skipped", file=sys.stderr)
            continue
        spec, own = family.sampler(model), family.defaults(model)
        guidance = cfg.teacher_guidance if spec.teacher else student_guidance(cfg.guidance, own)
        grid = cfg.teacher_steps if spec.teacher else cfg.steps
        for steps in (len(own.timesteps),) if own.timesteps is not None else grid:  # fixed timesteps: one run
            check_request(family, model, Request("", steps, guidance))
            runs.append(Run(model, spec.kind, steps, guidance))
    if not runs:
        raise ModelLoadError(f"nothing to evaluate: none of {', '.join(cfg.models)} is in family {family.name}")
    return runs


def student_guidance(given: float | None, own: MemberDefaults) -> float:
    """A student's guidance scale: the one `given` on the command line, else the member's own, else 5."""
    return given if given is not None else own.guidance or DEFAULT_GUIDANCE


def per_prompt_metrics(scores: dict[str, Any]) -> list[str]:
    """The per-image metrics compared between runs: every reward, the prompt-following win rate and (when scored)
    the high-frequency share."""
    return [k for k in scores if k.startswith("reward_")] + ["pf_win"] + [k for k in ("hf_share",) if k in scores]


def paired_differences(per_seed: list[dict[str, Any]], base_seeds: list[dict[str, Any]], base: str
                       ) -> dict[str, Any]:
    """`<metric>_vs_base` and its 95% half-width: the mean over prompts of (run - baseline) per-prompt means, on
    the same prompts and seeds, so prompt difficulty cancels out (much narrower than the two rows' intervals)."""
    out: dict[str, Any] = {"baseline": base}
    for key in per_prompt_metrics(per_seed[0]):
        diff = per_prompt_mean(per_seed, key) - per_prompt_mean(base_seeds, key)
        out[f"{key}_vs_base"], out[f"{key}_vs_base_ci95"] = normal_ci(diff)
    return out


class Evaluation:
    """Generates and scores every (run, seed) of a config, cached under `<out>/cache`, and summarises them."""

    def __init__(self, cfg: EvalConfig, prompt_set: PromptSet | None = None, family: Any | None = None) -> None:
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.family = family if family is not None else load_family(cfg.family)
        self.runs = plan_runs(self.family, cfg)
        self.prompt_set = prompt_set or load_prompt_set(cfg.prompts, cfg.prompt_source, cfg.max_prompts)
        if len(self.prompt_set.prompts) < 2:
            raise ModelLoadError(f"prompt set {cfg.prompts} has {len(self.prompt_set.prompts)} prompt(s); need 2+")
        self.prompts_key = digest(self.prompt_set.prompts)
        self.score_texts = score_texts(self.prompt_set, cfg.score_text)
        self.baseline = self.baseline_run()  # checked before any generation
        self.groups = seed_spread.parse_groups(cfg.seed_groups, sorted({r.model for r in self.runs}))
        self.pairs = seed_spread.parse_pairs(cfg.compare, self.groups)
        self.per_run: dict[Run, list[dict[str, Any]]] = {}
        self._scorers: tuple[nn.Module, dict[str, nn.Module], nn.Module] | None = None
        self.scorer_owner: Evaluation = self  # a names twin loads no second copy of the scorers
        self.names_twin = self.bare_names_twin() if cfg.paired_names else None

    def bare_names_twin(self) -> "Evaluation":
        """The same evaluation on the phrased set's concepts by their bare names, in the same order and under the
        same `out` (its cache keys differ by the prompts; copying a names evaluation's cache in reuses it)."""
        ps = self.prompt_set
        if ps.names is None or ps.phrasings is None:
            raise InputError(f"--paired-names needs a phrased set of named concepts (heldout-val-free, "
                             f"heldout-test-free); {ps.name} is not one")
        names = PromptSet(f"{ps.name} by bare names", ps.names, f"the concept names of {ps.source}", ps.reference,
                          ps.names)
        twin = Evaluation(replace(self.cfg, paired_names=False, score_text="prompt", seed_groups=(), compare=()),
                          names, self.family)
        twin.scorer_owner = self
        return twin

    @property
    def scorers(self) -> tuple[nn.Module, dict[str, nn.Module], nn.Module]:
        """(prompt-following reward, {name: reward}, feature extractor), loaded on first use, on the device."""
        if self.scorer_owner is not self:
            return self.scorer_owner.scorers
        if self._scorers is None:
            pf_reward, rewards = family_rewards(self.family, self.cfg.rewards)
            device = self.cfg.device
            self._scorers = (pf_reward.to(device), {k: r.to(device) for k, r in rewards.items()},
                             efficientnet_lite0_features().to(device))
        return self._scorers

    def generation_path(self, run: Run, seed: int) -> Path:
        key = digest(self.family.name, member_fingerprint(self.family, run.model), run, seed, self.prompts_key,
                     self.cfg.device, self.cfg.dtype)
        return self.out / "cache" / run.model / f"steps{run.steps}-cfg{run.guidance:g}-seed{seed}-{key}.pt"

    def generated(self, run: Run, seed: int) -> dict[str, Any]:
        """Images, latency and NFE of (run, seed), from the cache or generated now."""

        def compute() -> dict[str, Any]:
            pipe = self.family.pipeline(run.model).to(self.cfg.device, DTYPES[self.cfg.dtype])
            return generate_images(pipe, self.prompt_set.prompts, run.steps, run.guidance, seed, self.cfg.batch_size,
                                   desc=f"{run.model} {run.steps} steps seed {seed}",
                                   **sampling_extras(self.family, run.model, pipe))

        return cached(self.generation_path(run, seed), compute)

    def latency(self, run: Run) -> dict[str, Any]:
        """`time_pipeline` of the run on the first `latency_batch` prompts, from the cache or measured now."""
        cfg = self.cfg
        prompts = self.prompt_set.prompts[:cfg.latency_batch]
        key = digest(self.family.name, member_fingerprint(self.family, run.model), run, prompts, cfg.device,
                     cfg.dtype, cfg.latency_repeats)
        path = self.out / "cache" / run.model / f"steps{run.steps}-cfg{run.guidance:g}-latency-{key}.pt"

        def compute() -> dict[str, Any]:
            pipe = self.family.pipeline(run.model).to(cfg.device, DTYPES[cfg.dtype])
            return time_pipeline(pipe, run.steps, run.guidance, len(prompts), cfg.latency_repeats, prompt=prompts,
                                 **sampling_extras(self.family, run.model, pipe))

        return cached(path, compute)

    def scored(self, run: Run | None, seed: int) -> dict[str, torch.Tensor]:
        """Per-image metrics of (run, seed); run None scores the prompt set's paired real images."""
        gen_path = (self.generation_path(run, seed) if run else
                    self.out / "cache" / f"reference-{self.prompts_key}-{self.family.resolution}.pt")
        rewards = [weights_fingerprint(n) for n in family_reward_names(self.family, self.cfg.rewards)]
        key = digest(rewards, FD_EFFNET, self.cfg.pf_group, self.cfg.device, SCORES_VERSION,
                     *([self.score_texts] if self.score_texts != self.prompt_set.prompts else []))
        path = gen_path.with_name(f"{gen_path.stem}-scores-{key}.pt")

        def compute() -> dict[str, torch.Tensor]:
            images = self.generated(run, seed)["images"] if run else self.paired_reference()
            pf_reward, rewards, extractor = self.scorers
            return score_images(images, self.score_texts, pf_reward, rewards, extractor, self.cfg.batch_size,
                                self.cfg.pf_group)

        return cached(path, compute)

    def paired_reference(self) -> torch.Tensor:
        assert self.prompt_set.reference is not None
        return self.prompt_set.reference(self.family.resolution)

    def reference_features(self) -> tuple[torch.Tensor, str] | None:
        """(reference features (M,D), description) for the Frechet distance, or None when there is no reference."""
        if self.cfg.reference:
            folder = Path(self.cfg.reference).expanduser()
            if not folder.is_dir():
                raise ModelLoadError(f"reference image folder not found: {folder}")
            key = digest(str(folder.resolve()), self.family.resolution, FOLDER_PREP)
            path = self.out / "cache" / f"reference-folder-{key}.pt"

            def compute() -> dict[str, torch.Tensor]:
                extractor = self.scorers[2]
                device = next(extractor.parameters()).device
                feats = [extractor(b.to(device).float() / 255).float().cpu()
                         for b in tqdm(iter_image_folder(folder, self.family.resolution, self.cfg.batch_size),
                                       desc="reference", leave=False)]
                return {"features": torch.cat(feats)}

            with torch.no_grad():
                feats = cached(path, compute)["features"]
            return feats, f"{len(feats)} images from {folder} (centre-cropped, {self.family.resolution} px)"
        if self.prompt_set.reference is None:
            return None
        feats = self.scored(None, 0)["features"]
        return feats, f"{len(feats)} paired real images of the prompt set ({self.family.resolution} px)"

    def rows(self, reference: tuple[torch.Tensor, str] | None) -> list[dict[str, Any]]:
        """One summary row per run (plus a `real` row for the paired real images), computing what is missing;
        `reference` as from `reference_features`."""
        fd_ref = FrechetReference.from_features(reference[0]) if reference is not None else None
        jobs = [(run, seed) for run in self.runs for seed in self.cfg.seeds]
        per_run: dict[Run, list[dict[str, Any]]] = {run: [] for run in self.runs}
        for run, seed in tqdm(jobs, desc="evaluate"):
            scores = self.scored(run, seed)
            timing = {k: v for k, v in self.generated(run, seed).items() if k != "images"}  # keep no images around
            per_run[run].append({**timing, **scores})
        latency = {run: self.latency(run) for run in tqdm(self.runs, desc="latency")}
        self.per_run = per_run
        rows = [self.summarize(run, per_seed, fd_ref, latency[run]) for run, per_seed in per_run.items()]
        base = self.baseline
        if base is not None:
            for row, (run, per_seed) in zip(rows, per_run.items()):
                if run != base:
                    row.update(paired_differences(per_seed, per_run[base], f"{base.model} {base.steps}"))
        if self.prompt_set.reference is not None and not self.cfg.reference:
            rows.append(self.summarize(None, [self.scored(None, 0)], None, None))
        return rows

    def baseline_run(self) -> Run | None:
        """The run every other run is compared with prompt by prompt: `cfg.baseline` ("model:steps", or "model": its
        largest step count), else the teacher at its largest step count, else None."""
        if self.cfg.baseline:
            model, _, steps = self.cfg.baseline.partition(":")
            match = [r for r in self.runs if r.model == model and (not steps or str(r.steps) == steps)]
            if not match:
                runs = ", ".join(f"{r.model}:{r.steps}" for r in self.runs)
                raise InputError(f"baseline {self.cfg.baseline} is not among the evaluated runs ({runs})")
            return max(match, key=lambda r: r.steps)
        teachers = [r for r in self.runs if sampler(r.kind).teacher]
        return max(teachers, key=lambda r: r.steps) if teachers else None

    def summarize(self, run: Run | None, per_seed: list[dict[str, Any]], fd_ref: FrechetReference | None,
                  latency: dict[str, Any] | None) -> dict[str, Any]:
        """Means and 95% half-widths over prompts (each prompt's mean over seeds); FD with a bootstrap over prompts
        (the reference fixed)."""
        n = len(self.prompt_set.prompts)
        row: dict[str, Any] = {"family": self.family.name, "prompts": self.prompt_set.name, "n_prompts": n,
                               "seeds": len(per_seed), "n_images": n * len(per_seed),
                               "model": run.model if run else "real", "kind": run.kind if run else "real",
                               "steps": run.steps if run else "", "guidance": run.guidance if run else ""}
        if run is not None and latency is not None:
            row["nfe"] = per_seed[0]["nfe"]
            row["seconds_per_image"] = latency["seconds_per_image"]
            row["latency_batch"] = latency["batch_size"]
            row["generation_s_per_image"] = float(np.mean([s["seconds_per_image"] for s in per_seed]))
            row["generation_batch"] = per_seed[0]["batch_size"]
        for key in per_prompt_metrics(per_seed[0]) + ["pf_top1"]:
            row[key], row[f"{key}_ci95"] = normal_ci(per_prompt_mean(per_seed, key))
        if fd_ref is not None:
            feats = torch.stack([s["features"] for s in per_seed])  # (S, N, D)
            row["fd"], row["fd_ci95"] = bootstrap_ci(lambda idx: fd_ref.distance(feats[:, idx].flatten(0, 1)), n,
                                                     self.cfg.bootstrap)
        return row

    def sample_rows(self) -> tuple[list[tuple[str, torch.Tensor]], list[str]]:
        """([(label, uint8 images (k,3,H,W))] per run (and the real images), their k prompts): `sample_prompts`
        evenly spaced prompts, first seed."""
        idx = even_subset(list(range(len(self.prompt_set.prompts))), self.cfg.sample_prompts)
        rows = [(f"{r.model}, {r.steps} step{'s' if r.steps > 1 else ''}",
                 self.generated(r, self.cfg.seeds[0])["images"][idx]) for r in self.runs]
        if self.prompt_set.reference is not None:
            rows.append(("real", self.paired_reference()[idx]))
        return rows, [self.prompt_set.prompts[i] for i in idx]


def run_evaluation(cfg: EvalConfig, command: str = "python -m rglcd.evaluate") -> list[dict[str, Any]]:
    """Evaluate, write every output under `cfg.out`, return the summary rows."""
    ev = Evaluation(cfg)
    out = ev.out
    out.mkdir(parents=True, exist_ok=True)
    reference = ev.reference_features()
    rows = ev.rows(reference)
    write_csv(rows, out / "results.csv")
    write_markdown(ev, rows, out / "results.md", reference[1] if reference else None, command)
    plot_results(rows, out, family_reward_names(ev.family, cfg.rewards)[0])
    plot_samples(*ev.sample_rows(), out / "samples.png")
    if ev.groups:
        write_seed_spread(ev, out / "seed-spread.md", command)
    if ev.names_twin is not None:
        write_free_vs_names(ev, out / "free-vs-names.md", command)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    return rows


@torch.no_grad()
def evaluate_prompt_following(family: Any, member: str, reward: nn.Module, prompt_sets: dict[str, list[str]],
                              steps: int, guidance: float, seed: int = 0, grid_path: str | Path | None = None,
                              unet: Any | None = None, kind: str | None = None,
                              scheduler_options: dict[str, Any] | None = None) -> dict[str, float]:
    """`prompt_following` of a family member on each named prompt set (e.g. 16 training, 16 held-out prompts).

    One image per prompt, seed `seed`; keys `{set}_{win_rate,top1,reward}`. With `grid_path`, writes
    `<stem>-<set>.png` beside it. `unet` (and `kind`, `scheduler_options`) override the member's weights (a model
    in training).
    """
    pipe = family.pipeline(member, unet=unet, kind=kind, scheduler_options=scheduler_options)
    out: dict[str, float] = {}
    for split, prompts in prompt_sets.items():
        images = pipe(prompts, num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                      generator=torch.Generator().manual_seed(seed)).images.float().cpu()
        out.update({f"{split}_{k}": v for k, v in prompt_following(reward, images, prompts).items()})
        if grid_path is not None:
            grid_path = Path(grid_path)
            save_grid(images, grid_path.with_name(f"{grid_path.stem}-{split}.png"), nrow=8)
    return out


def write_seed_spread(ev: Evaluation, path: Path, command: str) -> None:
    """seed-spread.md: each `--seed-groups` group's spread and each `--compare` pair per training seed, on the
    family's first reward (`rglcd.evaluate.seeds`)."""
    metric = f"reward_{family_reward_names(ev.family, ev.cfg.rewards)[0]}"
    scores = {(run.model, run.steps): per_seed for run, per_seed in ev.per_run.items()}
    kinds = {run.model: run.kind for run in ev.runs}
    student_steps = tuple(sorted({r.steps for r in ev.runs if not sampler(r.kind).teacher}))
    groups = seed_spread.group_rows(scores, ev.groups, metric)
    comparisons = seed_spread.compare(scores, kinds, ev.groups, ev.pairs, student_steps, metric)
    head = (f"# Training-seed spread: {ev.family.name} on `{ev.prompt_set.name}`\n\n- Command: `{command}`\n"
            f"- {len(ev.prompt_set.prompts)} prompts x evaluation seeds {', '.join(map(str, ev.cfg.seeds))}; "
            "each member's value is its mean over prompts and evaluation seeds.\n\n")
    path.write_text(head + seed_spread.markdown(groups, comparisons, metric))


def write_free_vs_names(ev: Evaluation, path: Path, command: str) -> None:
    """free-vs-names.md: each run's free-text share of its bare-names reward, paired per concept, and each seed
    group's (`rglcd.evaluate.freetext`), one table per reward (the family's, then `--rewards`); generates the names
    images it lacks."""
    twin = ev.names_twin
    assert twin is not None
    jobs = [(run, seed) for run in ev.runs for seed in ev.cfg.seeds]
    names = {run: [] for run in ev.runs}
    for run, seed in tqdm(jobs, desc="bare names"):
        names[run].append(twin.scored(run, seed))
    label = {run: f"{run.model} {run.steps}" for run in ev.runs}
    ps = ev.prompt_set
    real = ps.reference is not None and ev.cfg.score_text == "prompt"
    groups = {}
    for name, members in ev.groups.items():
        for steps in sorted({r.steps for r in ev.runs}):
            found = [label[r] for m in members for r in ev.runs if r.model == m and r.steps == steps]
            if len(found) == len(members):
                groups[f"{name} {steps}"] = found
    tables = []
    for metric in (f"reward_{n}" for n in family_reward_names(ev.family, ev.cfg.rewards)):
        shares = {label[run]: freetext.share_of_names(per_prompt_mean(ev.per_run[run], metric),
                                                      per_prompt_mean(names[run], metric)) for run in ev.runs}
        if real:  # one true image per concept, scored against its phrased prompt and against its name
            shares["real"] = freetext.share_of_names(ev.scored(None, ev.cfg.seeds[0])[metric],
                                                     twin.scored(None, ev.cfg.seeds[0])[metric])
        tables.append(freetext.markdown(shares, groups, metric))
    head = (f"# Free text against bare names: {ev.family.name} on `{ps.name}`\n\n- Command: `{command}`\n"
            f"- {len(ps.prompts)} concepts x evaluation seeds {', '.join(map(str, ev.cfg.seeds))}, each generated "
            f"from its phrased prompt (free text) and from its bare name (names), same seeds; the rewards score each "
            f"image against {'its bare name' if ev.cfg.score_text == 'name' else 'the prompt it was made from'}.\n"
            f"- Split: {split_note(ps.name)}\n"
            "- free / names: the ratio of the two means over concepts; its 95% interval is paired per concept "
            "(delta method, `rglcd.evaluate.freetext`). 'met': the interval lies above "
            f"{100 * freetext.TARGET:.0f}% (free text within {100 - 100 * freetext.TARGET:.0f}% of names), 'short': "
            "below, else 'not shown'.\n"
            + ("- real: the paired real image of each concept, the same image under both texts: the share the reward "
               "itself keeps of a true image when only the text is phrased: a generator whose image under every "
               "phrasing were the true image would keep this much, not 100%.\n" if real else "") + "\n")
    path.write_text(head + "\n".join(tables))
