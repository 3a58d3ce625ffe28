"""Step time of distillation run by 2 processes (torchrun, gloo) against 1 process at the same global batch.

    python bench/multiprocess_step.py                  # emoji-64, lcd, global batch 32, 2 + 8 steps
    python bench/multiprocess_step.py --method mlcm --global-batch 16

Three runs of the trainer (`train/distill.py`'s code path, `rglcd.training.distill.train_distill`), one after the
other, each timing its own optimiser steps (`TrainStep`: the global batch's draw and this process's share, the
student's forward and backward, the gradient all-reduce, the optimiser and EMA steps): 1 process at the global batch
on 1 thread and on 2 threads, and 2 processes (1 thread each) at half of it. The 2-process step time is rank 0's
(the all-reduce makes the ranks wait for each other). On a 2-core CPU the 2-process run and the 2-thread run use
the same cores: the ratio says what splitting the batch across processes costs or saves against splitting each
operation across threads (the all-reduce and the per-process overhead against the threads' own). No validation, no
checkpoint until the last step. Writes bench/results/multiprocess-step-<family>-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from report import write_report

ROOT = Path(__file__).resolve().parents[1]


def worker(args: argparse.Namespace) -> None:
    """One run (this process, or one rank of a torchrun launch): time each `TrainStep` call; rank 0 writes them."""
    import torch

    from rglcd.training import distill

    torch.set_num_threads(args.threads)
    times: list[float] = []
    step = distill.TrainStep.__call__

    def timed(self: distill.TrainStep, index: int) -> dict:
        start = time.perf_counter()
        out = step(self, index)
        times.append(time.perf_counter() - start)
        return out

    distill.TrainStep.__call__ = timed
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with tempfile.TemporaryDirectory() as tmp:
        cfg = distill.DistillConfig.of(method=args.method, family=args.family, batch_size=args.global_batch // world,
                                       max_steps=args.warmup + args.steps, eval_every=0, checkpoint_every=10 ** 6,
                                       export_dir=None, report_to="none", resume=None, output_dir=tmp, seed=0)
        distill.train_distill(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        timed_steps = times[args.warmup:]
        Path(args.worker_out).write_text(json.dumps({
            "processes": world, "threads_per_process": args.threads, "batch_per_process": cfg.optim.batch_size,
            "median_step_s": round(statistics.median(timed_steps), 4), "step_s": [round(t, 4) for t in timed_steps]}))


def run(args: argparse.Namespace, processes: int, threads: int) -> dict:
    """A worker run with `processes` processes of `threads` threads; its rank 0's numbers."""
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        launch = ([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes)]
                  if processes > 1 else [sys.executable])
        cmd = [*launch, __file__, "--worker", "--worker-out", out.name, "--threads", str(threads), "--method",
               args.method, "--family", args.family, "--global-batch", str(args.global_batch), "--warmup",
               str(args.warmup), "--steps", str(args.steps)]
        env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=str(ROOT))
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", default="emoji-64")
    parser.add_argument("--method", default="lcd")
    parser.add_argument("--global-batch", type=int, default=32, help="samples per optimiser step, all processes")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--steps", type=int, default=8, help="timed steps")
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=None, help="JSON path (default bench/results/multiprocess-step-*.json)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.global_batch % 2:
        parser.error("--global-batch must split into 2 processes")
    runs = {"one_process_1_thread": run(args, 1, 1), "one_process_2_threads": run(args, 1, 2),
            "two_processes_1_thread": run(args, 2, 1)}
    two = runs["two_processes_1_thread"]["median_step_s"]
    args.full_size, args.device, args.dtype = None, "cpu", "fp32"
    write_report("multiprocess-step", args, method=args.method, global_batch=args.global_batch,
                 warmup=args.warmup, steps=args.steps, runs=runs,
                 two_processes_over_one_process_1_thread=round(two / runs["one_process_1_thread"]["median_step_s"], 3),
                 two_processes_over_one_process_2_threads=round(two / runs["one_process_2_threads"]["median_step_s"],
                                                                3))


if __name__ == "__main__":
    main()
