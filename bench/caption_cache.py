"""Time and peak memory of the embedded family's first-run preparation: the training-tensor cache
(`rglcd.data.emoji.emoji_training_tensors`: latents and the caption states of every concept x phrasing).

    python bench/caption_cache.py --limit-concepts 100      # 100 concepts x 48 phrasings (the LCM recipe's set)

Each measurement runs in a fresh process (so that its peak resident set is its own) with an empty cache folder:
the seconds of the call, the peak resident set size during it over the resident size before it (MB), and the size
of the file it writes (MB). The full recipe (1,700 concepts) scales both linearly from here.
Writes bench/results/caption-cache-<family>-cpu.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from report import write_report

ROOT = Path(__file__).resolve().parents[1]


def measure(family: str, limit: int, captions: str) -> dict[str, float]:
    """In this process: build the cache once into an empty RGLCD_CACHE; seconds, peak RSS growth (MB), file MB."""
    from rglcd.data.emoji import emoji_training_tensors
    from rglcd.models import load_family

    fam = load_family(family)
    fam.text_encoder  # noqa: B018 (loaded before the baseline resident size is read)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    data = emoji_training_tensors(fam, limit=limit, caption_set=captions)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (path,) = Path(os.environ["RGLCD_CACHE"]).glob("train-tensors-*.pt")
    return {"seconds": seconds, "peak_rss_growth_mb": peak - before, "file_mb": path.stat().st_size / 2**20,
            "captions": len(data["captions"]), "concepts": len(data["latents"])}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--family", default="emoji-64")
    p.add_argument("--limit-concepts", type=int, default=100)
    p.add_argument("--captions", default="wide", help="the caption set (the LCM recipe's: wide, 48 phrasings)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker:
        print(json.dumps(measure(args.family, args.limit_concepts, args.captions)))
        return 0
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, RGLCD_CACHE=cache, PYTHONPATH=str(ROOT))
        cmd = [sys.executable, __file__, "--worker", "--family", args.family, "--limit-concepts",
               str(args.limit_concepts), "--captions", args.captions] + (
                   ["--threads", str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if out.returncode:
        print(out.stderr[-3000:], file=sys.stderr)
        return 1
    args.full_size, args.device, args.dtype = None, "cpu", "fp32"
    write_report("caption-cache", args, **json.loads(out.stdout.strip().splitlines()[-1]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
