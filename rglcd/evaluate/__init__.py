"""Evaluation of a model family across members x step counts: generate, score, tabulate, plot
(`python -m rglcd.evaluate --help`).

    generate.py  images of a prompt set from a pipeline, latency, the UNet-call counter (NFE)
    score.py     rewards, prompt following, high-frequency share, FD-EffNetLite0 features, reference folders
    cache.py     cache keys (member fingerprints, digests) and the load-or-compute cache
    harness.py   EvalConfig, the (model, steps) runs, Evaluation (summaries, paired differences), run_evaluation,
                 evaluate_prompt_following (the trainers' check)
    report.py    markdown tables, results.csv / results.md, plots
    cli.py       the command line
"""

from rglcd.evaluate.cache import cached, digest, file_identity, member_fingerprint
from rglcd.evaluate.cli import build_parser, main
from rglcd.evaluate.generate import (DTYPES, SEED_STRIDE, UNetCalls, count_unet_evals, generate_images,
                                     image_generators, time_pipeline)
from rglcd.evaluate.harness import (EvalConfig, Evaluation, Run, evaluate_prompt_following, paired_differences,
                                    plan_runs, run_evaluation)
from rglcd.evaluate.report import (machine_description, paired_table, plot_results, plot_samples, results_table,
                                   split_note, write_csv, write_markdown)
from rglcd.evaluate.score import (FD_EFFNET, IMAGE_SUFFIXES, SCORES_VERSION, efficientnet_lite0_features,
                                  family_reward_names, family_rewards, iter_image_folder, prompt_following,
                                  prompt_groups, score_images, score_matrix)
from rglcd.images import image_grid, save_grid

__all__ = [
    "DTYPES", "FD_EFFNET", "IMAGE_SUFFIXES", "SCORES_VERSION", "SEED_STRIDE", "EvalConfig", "Evaluation", "Run",
    "UNetCalls", "build_parser", "cached", "count_unet_evals", "digest", "efficientnet_lite0_features",
    "evaluate_prompt_following", "family_reward_names", "family_rewards", "file_identity", "generate_images",
    "image_generators", "image_grid", "iter_image_folder", "machine_description", "main", "member_fingerprint",
    "paired_differences", "paired_table", "plan_runs", "plot_results", "plot_samples", "prompt_following",
    "prompt_groups", "results_table", "run_evaluation", "save_grid", "score_images", "score_matrix", "split_note",
    "time_pipeline", "write_csv", "write_markdown",
]
