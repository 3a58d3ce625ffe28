"""Run under torchrun by tests/test_distributed.py: several `train/distill.py` command lines one after the other in
the same processes (one launch, several runs, each through train/distill.py's own code path: `run_trainer`), and on
every rank but 0 a record of what the process wrote under a folder.

    torchrun --nproc_per_node 2 tests/distributed_distill.py WATCH REPORT -- ARGS... [-- ARGS...]

A rank r > 0 writes REPORT.r.json: every file it opened for writing, and every folder or file it created, renamed
or removed, under WATCH (Python's audit events: `open`, `os.mkdir`, `os.rename`, `os.remove`, `shutil.rmtree`).
"""

from __future__ import annotations

import json
import os
import sys

from accelerate import PartialState

from rglcd.training.cli_args import requested_method, run_trainer
from rglcd.training.trainers import trainer_for

WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
EVENTS = {"os.mkdir", "os.rename", "os.remove", "os.rmdir", "shutil.rmtree"}


def record_writes(watch: str, seen: list[str]) -> None:
    """Append to `seen` each write-like event of this process on a path under `watch`."""
    def hook(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], (str, os.PathLike)):
            mode, flags = args[1], args[2] if len(args) > 2 else 0
            writes = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & WRITE_FLAGS)
            paths = [args[0]] if writes else []
        elif event in EVENTS:
            paths = [a for a in args[:2] if isinstance(a, (str, os.PathLike))]
        else:
            return
        seen.extend(f"{event} {os.fspath(p)}" for p in paths if os.path.abspath(os.fspath(p)).startswith(watch))

    sys.addaudithook(hook)


def main(argv: list[str]) -> int:
    watch, report, rest = os.path.abspath(argv[0]), argv[1], argv[2:]
    rank, seen = int(os.environ.get("RANK", "0")), []
    if rank > 0:
        record_writes(watch, seen)
    runs: list[list[str]] = []
    for arg in rest:
        if arg == "--":
            runs.append([])
        else:
            runs[-1].append(arg)
    # each run ends with accelerate's end_training, which destroys the process group the next run needs: keep it
    # until all have run
    destroy, PartialState.destroy_process_group = PartialState.destroy_process_group, lambda self, group=None: None
    for args in runs:
        trainer = trainer_for(requested_method(args))
        status = run_trainer(trainer.train, trainer.config, argv=args, inputs=trainer.inputs)
        if status:
            return status
    destroy(PartialState())
    if rank > 0:
        with open(f"{report}.{rank}.json", "w") as fh:
            json.dump(seen, fh, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
