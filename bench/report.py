"""The JSON report every speed benchmark writes: what ran, where, with which command, then its numbers."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from rglcd.evaluate import machine_description

RESULTS = Path(__file__).resolve().parent / "results"


def write_report(kind: str, args: argparse.Namespace, **numbers: Any) -> Path:
    """Write `{what, device, dtype, machine, command, **numbers}` to `args.out` or
    bench/results/<kind>-<family or shape>-<device>.json; print the numbers; return the path."""
    what = args.full_size or args.family
    report = {"what": what, "device": args.device, "dtype": args.dtype, "machine": machine_description(args.device),
              "command": "python " + " ".join(sys.argv), **numbers}
    out = Path(args.out or RESULTS / f"{kind}-{what}-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))
    return out
