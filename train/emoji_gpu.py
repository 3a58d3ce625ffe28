"""Train the emoji-64 family on a lent GPU machine in one call (rglcd.devicepack):

    python train/emoji_gpu.py pack --plan train/plans/emoji-64-gpu.yaml      # here: writes .devpack/
    python train/emoji_gpu.py run --out $OUT                                    # there (see the plan's header)
    python train/emoji_gpu.py unpack PARTS_DIR --dest runs/emoji-64-gpu        # here: a family folder to evaluate
"""

import argparse
import json
import sys
from pathlib import Path

import yaml

from rglcd import devicepack


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pack", help="write the folder the GPU machine needs")
    p.add_argument("--plan", default="train/plans/emoji-64-gpu.yaml", help="teacher and student recipes, budgets")
    p.add_argument("--dir", default=".devpack", help="the folder to write (carried to the GPU machine)")
    p.add_argument("--limit-concepts", type=int, default=None, help="first N training concepts only (rehearsals)")
    p.add_argument("--no-wheels", action="store_true", help="skip downloading the wheels (rehearsals on this CPU)")
    r = sub.add_parser("run", help="on the GPU machine: train the teacher and the students")
    r.add_argument("--dir", default=".devpack", help="the packed folder")
    r.add_argument("--out", required=True, help="where the members' tar parts and run.json go")
    r.add_argument("--work", default="/tmp/rglcd-devicepack", help="scratch folder (checkpoints, tensors, logs)")
    r.add_argument("--device", default="cuda", help="cuda (the GPU machine) or cpu (a rehearsal here)")
    u = sub.add_parser("unpack", help="join the tar parts into a family folder")
    u.add_argument("parts", help="folder holding members.tar.gz.part*")
    u.add_argument("--dest", default="runs/emoji-64-gpu", help="the family folder to write (never under assets/)")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            plan = yaml.safe_load(Path(args.plan).read_text())
            sizes = devicepack.pack(Path(args.dir), plan, limit=args.limit_concepts, wheels=not args.no_wheels)
            print(json.dumps(sizes, indent=2), f"\ntotal {sum(sizes.values()) / 2**20:.1f} MiB")
        elif args.command == "run":
            report = devicepack.run(Path(args.dir), Path(args.out), Path(args.work), args.device)
            print(json.dumps({k: v for k, v in report.items() if k != "plan"}, indent=2, default=str))
        else:
            if Path(args.dest).resolve().is_relative_to(devicepack.ASSETS.resolve()):
                raise ValueError("unpack writes a family under runs/ (or elsewhere), never under assets/")
            print(devicepack.unpack(Path(args.parts), Path(args.dest)))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
