"""Wall time of the README's generate command, end to end (a fresh `python -m rglcd generate` process each run).

    python bench/generate_latency.py --runs 3 --out bench/results/generate-latency.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMMAND = ["-m", "rglcd", "generate", "--family", "emoji-64", "--model", "teacher", "--prompt", "red apple",
           "--steps", "25", "--guidance-scale", "5", "--seed", "0"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="bench/results/generate-latency.json")
    args = parser.parse_args()
    times = []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, *COMMAND, "--out", f"{tmp}/apple{i}.png"], cwd=ROOT, check=True,
                           env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"}, capture_output=True)
            times.append(time.perf_counter() - t0)
    result = {"command": "python " + " ".join(COMMAND) + " --out apple.png", "runs_s": [round(t, 2) for t in times],
              "median_s": round(statistics.median(times), 2), "max_s": round(max(times), 2)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
