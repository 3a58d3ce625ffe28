"""Run a repository script or `python -m` module in this test process, as its command line would run it.

A fresh interpreter costs 5-7 s here (torch, diffusers, transformers, gradio imports), more than most entry-point
checks themselves; the scripts are thin (`train/*.py`: parse, build, call the library), so running their file as
`__main__` with that argv checks the same code. The tests that are about a fresh interpreter (the installed `rglcd`
script and `train/distill.py` from another folder, the import orders, the accelerate and torchrun launches, a
kill -9) still start one.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import runpy
import sys
from pathlib import Path


def run_entry_point(target: str | Path, args: list[str], cwd: str | Path | None = None) -> tuple[int, str, str]:
    """(exit status, stdout, stderr) of `python target args...` (a script path) or `python -m target args...` (a
    module name), run in this process from `cwd` (default: here)."""
    out, err = io.StringIO(), io.StringIO()
    module = not str(target).endswith(".py")
    argv, path, old_cwd = sys.argv, list(sys.path), os.getcwd()
    sys.argv = [str(target) if not module else "-m", *args]
    code: int | str | None = 0
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if module:  # runpy warns when the module it runs (a package's `__main__`) is already imported
                    spec = importlib.util.find_spec(str(target))
                    ran = f"{target}.__main__" if spec and spec.submodule_search_locations is not None else str(target)
                    imported = sys.modules.pop(ran, None)
                    try:
                        runpy.run_module(str(target), run_name="__main__", alter_sys=True)
                    finally:
                        if imported is not None:
                            sys.modules[ran] = imported
                else:  # as python does, the script's folder first on the path (bench/ imports its neighbours)
                    sys.path.insert(0, str(Path(target).resolve().parent))
                    runpy.run_path(str(target), run_name="__main__")
            except SystemExit as exit_:
                code = exit_.code
    finally:
        sys.argv, sys.path[:] = argv, path
        os.chdir(old_cwd)
    if isinstance(code, str):  # SystemExit("message"): printed, status 1
        err.write(code + "\n")
        code = 1
    return int(code or 0), out.getvalue(), err.getvalue()
