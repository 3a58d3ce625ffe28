"""Throughput of the streaming data pipeline (`rglcd.data.stream`) and its split of decoding across ranks.

    python bench/data_pipeline.py --threads 1             # 2,000 synthetic 512 px JPEGs, 64 px crops, 0/1/2 workers

A synthetic webdataset (`--samples` JPEGs of `--size` px in `--shards` tar shards, written with webdataset's
ShardWriter to a temporary folder) is read for one epoch by `ShardStream` (epoch mode, shuffle buffer 1000) with
0, 1 and 2 DataLoader workers: samples decoded, resized and centre-cropped to `--resolution` per second, from the
stream's start (worker start-up included) to its last sample. Workers run torch on one thread each (the DataLoader
sets it); the training process on `--threads`, and 0 workers is also timed on torch's default thread count, which
is what an in-process decode shares with training. Then the same epoch is read by 2 real processes
(torchrun, gloo), each counting its calls of `decode_record` (0 workers, so that the counter is the process's):
each rank must decode half of the samples, and the two together each sample once.
Writes bench/results/data-pipeline-<resolution>px-cpu.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import rglcd.data.stream as stream
from rglcd.data.stream import ShardStream, StreamOptions
from rglcd.evaluate import machine_description

RESULTS = Path(__file__).resolve().parent / "results"
ROOT = Path(__file__).resolve().parents[1]


def write_synthetic_shards(folder: Path, samples: int, size: int, shards: int) -> str:
    """`samples` JPEGs (size x size, smooth random colour fields with grain: about 40 kB each, like web photos) with
    captions in `shards` shards under `folder`; returns the brace pattern."""
    import webdataset as wds

    rng = np.random.default_rng(0)
    per_shard = -(-samples // shards)
    with wds.ShardWriter(str(folder / "%05d.tar"), maxcount=per_shard, verbose=0) as sink:
        for i in range(samples):
            coarse = Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).resize((size, size),
                                                                                             Image.BICUBIC)
            pixels = np.asarray(coarse, dtype=np.int16) + rng.integers(-12, 13, (size, size, 3))
            buf = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
            with tempfile.SpooledTemporaryFile() as fh:
                buf.save(fh, format="JPEG", quality=90)
                fh.seek(0)
                sink.write({"__key__": f"{i:06d}", "jpg": fh.read(), "txt": f"synthetic image {i}"})
    return str(folder / f"{{00000..{shards - 1:05d}}}.tar")


def throughput(pattern: str, resolution: int, workers: int, batch: int, threads: int | None = None
               ) -> dict[str, float]:
    """Samples per second of one epoch read with `workers` DataLoader workers (the training process's torch on
    `threads`, None: as it is)."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads or before)
    source = ShardStream(pattern, resolution, options=StreamOptions("epoch", 1000, workers, 0))
    start = time.perf_counter()
    n = sum(1 for _ in source.one_pass(batch))
    seconds = time.perf_counter() - start
    torch.set_num_threads(before)
    return {"workers": workers, "process_threads": threads or before, "samples": n, "seconds": round(seconds, 2),
            "samples_per_s": round(n / seconds, 1)}


def per_rank(pattern: str, resolution: int, out: Path) -> None:
    """One rank under torchrun: read this rank's epoch with 0 workers, counting decodes; write them to `out`."""
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    calls = {"n": 0}
    decode = stream.decode_record

    def counted(*args: object) -> dict:
        calls["n"] += 1
        return decode(*args)

    stream.decode_record = counted
    start = time.perf_counter()
    keys = [c for _, c in ShardStream(pattern, resolution, rank, world, StreamOptions("epoch", 1000, 0, 0)).one_pass()]
    (out / f"rank{rank}.json").write_text(json.dumps({"rank": rank, "decodes": calls["n"], "samples": len(keys),
                                                      "seconds": round(time.perf_counter() - start, 2),
                                                      "keys": keys}))
    dist.destroy_process_group()


def two_ranks(pattern: str, resolution: int, folder: Path) -> dict[str, object]:
    """Decodes per rank of 2 real processes (torchrun --nproc_per_node 2, gloo) reading one epoch."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                    __file__, "--per-rank", str(folder), "--pattern", pattern, "--resolution", str(resolution)],
                   check=True, env=env)
    ranks = [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]
    keys = [k for r in ranks for k in r.pop("keys")]
    return {"measured_by": "2 processes (torchrun --nproc_per_node 2, gloo), a counter on decode_record in each, "
                           "0 DataLoader workers", "ranks": ranks, "total_decodes": sum(r["decodes"] for r in ranks),
            "distinct_samples": len(set(keys))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--size", type=int, default=512, help="side of the synthetic JPEGs")
    parser.add_argument("--resolution", type=int, default=64, help="crop side (emoji-64: 64)")
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batch", type=int, default=32, help="DataLoader batch")
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads", type=int, default=None, help="torch threads of the training process")
    parser.add_argument("--out", default=None)
    parser.add_argument("--per-rank", default=None, help=argparse.SUPPRESS)  # the torchrun child
    parser.add_argument("--pattern", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.per_rank:
        per_rank(args.pattern, args.resolution, Path(args.per_rank))
        return
    default = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        start = time.perf_counter()
        pattern = write_synthetic_shards(folder, args.samples, args.size, args.shards)
        written = time.perf_counter() - start
        shard_mb = sum(p.stat().st_size for p in folder.glob("*.tar")) / 2**20
        throughput(pattern, args.resolution, 0, args.batch)  # warm-up: page cache, PIL and torch kernels
        runs = [throughput(pattern, args.resolution, w, args.batch, args.threads) for w in args.workers]
        default_threads = throughput(pattern, args.resolution, 0, args.batch, default)
        ranks = two_ranks(pattern, args.resolution, folder)
    report = {"what": f"{args.samples} synthetic {args.size} px JPEGs ({shard_mb:.0f} MiB in {args.shards} shards) "
                      f"-> {args.resolution} px crops", "device": "cpu",
              "machine": machine_description("cpu"), "command": "python " + " ".join(sys.argv),
              "load_average_1min_at_end": round(os.getloadavg()[0], 2), "write_s": round(written, 1),
              "throughput": runs, "in_process_decode_default_threads": default_threads,
              "speedup_vs_0_workers": {r["workers"]: round(r["samples_per_s"] / runs[0]["samples_per_s"], 2)
                                       for r in runs},
              "decodes_per_rank_2_ranks": ranks}
    out = Path(args.out or RESULTS / f"data-pipeline-{args.resolution}px-cpu.json")
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
