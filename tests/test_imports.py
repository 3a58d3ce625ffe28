"""The package's import graph: every module imports in a fresh interpreter whatever the order, the module-top imports
of the package's own modules form no cycle, `rglcd.loading` is a leaf, and `rglcd.rewards` never imports
`rglcd.models` (the models <-> rewards cycle that imports inside functions used to hide cannot come back)."""

from __future__ import annotations

import ast
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "rglcd"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = sorted(module_name(p) for p in PACKAGE.rglob("*.py"))


def own_imports(path: Path, top_only: bool) -> set[str]:
    """The rglcd modules a file imports: at module top (class bodies and `if`/`try` blocks included, function
    bodies not) with `top_only`, else anywhere. `from rglcd.x import y` counts as rglcd.x.y when that is a module."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if top_only and isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names if a.name.split(".")[0] == "rglcd")
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module \
                    and child.module.split(".")[0] == "rglcd":
                subs = {f"{child.module}.{a.name}" for a in child.names} & set(MODULES)
                found.update(subs or {child.module})
                if len(subs) < len(child.names):
                    found.add(child.module)
            visit(child)

    visit(ast.parse(path.read_text()))
    return found


def graph(top_only: bool) -> dict[str, set[str]]:
    return {module_name(p): own_imports(p, top_only) for p in PACKAGE.rglob("*.py")}


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for nxt in edges.get(todo.pop(), ()):
            if nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return seen


def test_the_scan_sees_the_package_and_its_imports():
    top = graph(top_only=True)
    assert {"rglcd.models", "rglcd.rewards", "rglcd.loading", "rglcd.rewards.proxy"} <= set(MODULES)
    assert "rglcd.loading" in top["rglcd.models"] and "rglcd.rewards" in top["rglcd.models"]
    assert "rglcd.pixels" in top["rglcd.data.fashion_mnist"]  # `from rglcd import pixels`: the module


def test_loading_is_a_leaf():
    assert own_imports(PACKAGE / "loading.py", top_only=False) == set()
    assert own_imports(PACKAGE / "files.py", top_only=False) == set()


def test_rewards_never_import_models_so_there_is_no_cycle_between_them():
    every = graph(top_only=False)
    rewards = [m for m in MODULES if m == "rglcd.rewards" or m.startswith("rglcd.rewards.")]
    for module in rewards:
        assert "rglcd.models" not in every[module], f"{module} imports rglcd.models"
        assert "rglcd.models" not in reachable(every, module), f"{module} reaches rglcd.models"
    top = graph(top_only=True)
    assert not ("rglcd.rewards" in reachable(top, "rglcd.models") and "rglcd.models" in reachable(top, "rglcd.rewards"))


def test_module_top_imports_form_no_cycle():
    top = graph(top_only=True)
    cycles = [m for m in MODULES if m in reachable(top, m)]
    assert not cycles, f"modules on an import cycle: {cycles}"


ORDERS = {"sorted": MODULES, "reversed": MODULES[::-1],
          "rewards first": ["rglcd.rewards.proxy", "rglcd.rewards", *MODULES],
          "shuffled": random.Random(0).sample(MODULES, len(MODULES))}


@pytest.fixture(scope="module")
def imported() -> dict[str, list[str]]:
    """Every order run in one fresh interpreter: before each order every rglcd module is dropped from sys.modules,
    so each order imports the package's modules afresh (third-party modules stay loaded: they never import rglcd,
    and a fresh interpreter per order cost 7 s of CPU each). Per order: the rglcd modules its first one loaded."""
    script = ("import importlib, json, sys\n"
              "orders, found = json.loads(sys.argv[1]), {}\n"
              "for order, names in orders.items():\n"
              "    for loaded in [m for m in sys.modules if m == 'rglcd' or m.startswith('rglcd.')]:\n"
              "        del sys.modules[loaded]\n"
              "    importlib.import_module(names[0])\n"
              "    found[order] = sorted(m for m in sys.modules if m.startswith('rglcd'))\n"
              "    for name in names:\n"
              "        importlib.import_module(name)\n"
              "print(json.dumps(found))\n")
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    out = subprocess.run([sys.executable, "-c", script, json.dumps(ORDERS)], capture_output=True, text=True, env=env,
                         cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("order", list(ORDERS))
def test_every_module_imports_in_a_fresh_interpreter(imported, order):
    alone = imported[order]
    assert ORDERS[order][0] in alone
    if ORDERS[order][0].startswith("rglcd.rewards"):
        assert "rglcd.models" not in alone, "importing the rewards loaded rglcd.models"
