"""Evaluation of a model family across members x step counts: generate, score, tabulate, plot.

    python -m rglcd.evaluate --family emoji-64 --models teacher,lcm,rg-lcm,mlcm --steps 1,2,4,8 \
        --prompts heldout --seeds 0,1 --out results/

Teachers sample at `--teacher-steps` with classifier-free guidance, students at each `--steps`. Per (model, steps):
every reward of the family (mean own-prompt score), prompt following (own prompt vs the other prompts of the set),
a Frechet distance to real images in EfficientNet-Lite0 ImageNet features ("FD-EffNetLite0", not FID), seconds per
image and UNet evaluations per image (NFE), with 95% confidence intervals over prompts. Generated images and their
features and scores are cached per (model, steps, seed) under `<out>/cache/`, so a rerun skips what is done.
Writes `<out>/results.csv`, `results.md`, `reward-vs-steps.png`, `quality-vs-latency.png` and `samples.png`.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

import torch

from rglcd.data.prompts import PromptSetError
from rglcd.evaluate.generate import DTYPES
from rglcd.evaluate.harness import EvalConfig, run_evaluation
from rglcd.evaluate.report import results_table
from rglcd.inputs import MAX_SEED, InputError, OneLineParser, shown
from rglcd.logs import quiet_libraries
from rglcd.models import ModelLoadError


def _whole(text: str, low: int, high: int | None) -> int:
    """`text` as a whole number in [low, high] (high None: no upper bound), else ArgumentTypeError (one line)."""
    try:
        value = int(text.strip()) if len(text) <= 40 else None
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        span = f"between {low} and {high}" if high is not None else f">= {low}"
        raise argparse.ArgumentTypeError(f"expected whole numbers {span}, got {shown(text)}")
    return value


def whole_numbers(low: int, high: int | None = None) -> Callable[[str], tuple[int, ...]]:
    """An argparse type: comma-separated whole numbers in [low, high], at least one ('1,2,4,8' -> (1, 2, 4, 8))."""
    def parse(text: str) -> tuple[int, ...]:
        values = tuple(_whole(v, low, high) for v in text.split(",") if v.strip())
        if not values:
            raise argparse.ArgumentTypeError("expected at least one value")
        return values

    return parse


def whole_number(low: int) -> Callable[[str], int]:
    """An argparse type: one whole number >= low."""
    return lambda text: _whole(text, low, None)


def name_list(text: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in text.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="python -m rglcd.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = EvalConfig()
    p.add_argument("--family", default=d.family, help="preset name, family.json or folder")
    p.add_argument("--models", type=name_list, default=d.models, help="comma-separated members (default: all)")
    p.add_argument("--steps", type=whole_numbers(1), default=d.steps, help="student step counts (default 1,2,4,8)")
    p.add_argument("--teacher-steps", type=whole_numbers(1), default=d.teacher_steps, help="teacher steps (default 25,50)")
    p.add_argument("--guidance", type=float, default=d.guidance,
                   help="student guidance scale (default: each member's own, else 5)")
    p.add_argument("--teacher-guidance", type=float, default=d.teacher_guidance, help="teacher CFG scale (default 5)")
    p.add_argument("--prompts", default=d.prompts,
                   help="heldout | heldout-val | heldout-test | heldout-val-free | heldout-test-free | train | "
                        "eval-heldout | eval-train | hpsv2[:style] | parti[:category] | coco | file:PATH")
    p.add_argument("--verbose", action="store_true", help="show the libraries' loading bars and warnings")
    p.add_argument("--prompt-source", default=None, help="local file/folder or hub:<dataset id> for benchmarks")
    p.add_argument("--max-prompts", type=whole_number(1), default=None, help="evenly spaced subset of the prompt set")
    p.add_argument("--seeds", type=whole_numbers(0, MAX_SEED), default=d.seeds, help="comma-separated seeds (default 0,1)")
    p.add_argument("--batch-size", type=whole_number(1), default=d.batch_size)
    p.add_argument("--reference", default=None, help="folder of real images for the Frechet distance")
    p.add_argument("--rewards", type=name_list, default=d.rewards,
                   help="more rewards to report: registry names, or name@weights (that reward on other weights, a "
                        "folder, file or hub id: emoji@runs/emoji-64/reward)")
    p.add_argument("--pf-group", type=whole_number(0), default=d.pf_group, help="prompt following within groups of N (0: all)")
    p.add_argument("--bootstrap", type=whole_number(1), default=d.bootstrap, help="bootstrap resamples for the FD interval")
    p.add_argument("--latency-batch", type=whole_number(1), default=d.latency_batch, help="images per timed call")
    p.add_argument("--latency-repeats", type=whole_number(1), default=d.latency_repeats, help="timed calls (median)")
    p.add_argument("--baseline", default=None, help="model:steps (or model: its most steps) for paired differences "
                                                     "(default: the teacher, most steps)")
    p.add_argument("--seed-groups", nargs="+", default=(), metavar="NAME=MEMBER,MEMBER",
                   help="members that are one recipe at several training seeds; writes seed-spread.md")
    p.add_argument("--compare", nargs="+", default=(), metavar="A:B",
                   help="seed groups compared per training-seed pair (seed-spread.md)")
    p.add_argument("--score-text", choices=("prompt", "name"), default=d.score_text,
                   help="what rewards and prompt following score each image against: its own prompt (default) or the "
                        "bare concept name behind it (emoji sets: tells a phrasing's effect on the images from its "
                        "effect on the reward's reading of the text)")
    p.add_argument("--paired-names", action="store_true",
                   help="phrased sets (heldout-val-free, heldout-test-free): also generate each concept from its bare "
                        "name and write free-vs-names.md, each run's free-text share of its names reward with a "
                        "paired interval")
    p.add_argument("--skip-missing", action="store_true", help="skip models the family lacks (with a warning)")
    p.add_argument("--sample-prompts", type=whole_number(1), default=d.sample_prompts, help="columns of samples.png")
    p.add_argument("--out", default=d.out)
    p.add_argument("--device", default=d.device)
    p.add_argument("--dtype", choices=sorted(DTYPES), default=d.dtype)
    p.add_argument("--threads", type=whole_number(0), default=None, help="torch CPU threads")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    quiet_libraries(args.verbose)
    if args.threads:
        torch.set_num_threads(args.threads)
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(args).items()
              if k not in ("threads", "verbose")}
    command = "python -m rglcd.evaluate " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        rows = run_evaluation(EvalConfig(**fields), command)
    except (InputError, PromptSetError, ModelLoadError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Exception as err:  # noqa: BLE001 (one line; RGLCD_DEBUG=1 shows the traceback)
        if os.environ.get("RGLCD_DEBUG"):
            raise
        print(f"error: unexpected {type(err).__name__}: {err} (set RGLCD_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    print(results_table(rows))
    extra = (", seed-spread.md" if args.seed_groups else "") + (", free-vs-names.md" if args.paired_names else "")
    print(f"wrote {args.out}/results.csv, results.md, reward-vs-steps.png, quality-vs-latency.png, samples.png{extra}")
    return 0

