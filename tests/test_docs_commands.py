"""Every command line in README.md and docs/*.md parses as written: its script or module is run in this process up to
the point where its arguments are checked (a trainer: the recipe and every value against its setting's type and
range; any other entry point: its argparse parser), and a launcher's own flags go through accelerate's or torchrun's
parser. So a renamed flag, a removed recipe or a command broken across lines fails here. What the commands do is
tested elsewhere (the quick start, trainers, evaluator, app and benchmarks each have their tests); a command that
takes hours is checked only this far.

Templates in the documents are expanded: `for x in a b; do ... $x ...; done` once per value, `[--a | --b c]` once
per alternative (and once without), and the placeholders `...`, `PARTS_DIR`, `VARIANT` stand for any value.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from tests.entry_points import run_entry_point

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDERS = {"...": "x", "PARTS_DIR": "x", "VARIANT": "x"}
NOT_OURS = {"venv", "pip", "pytest"}  # python -m of other tools (the test command is CI's own)


class Parsed(Exception):
    """Raised where an entry point's arguments have been checked, instead of running it."""


def code_lines(text: str) -> list[str]:
    """The lines of the fenced code blocks of a markdown text, continuation lines joined as the shell joins them."""
    lines, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
            continue
        if inside:
            if line.endswith("\\"):
                pending += line[:-1]
            else:
                lines.append(pending + line)
                pending = ""
    return lines


def expand(line: str, loops: dict[str, list[str]]) -> list[str]:
    """One line per value of a loop variable it uses and per alternative of a `[a | b]` group."""
    for var, values in loops.items():
        if f"${var}" in line:
            return [x for v in values for x in expand(line.replace(f"${var}", v), loops)]
    group = re.search(r"\[([^\]]*\|[^\]]*)\]", line)
    if group:
        alternatives = ["", *(a.strip() for a in group.group(1).split("|"))]
        return [x for a in alternatives for x in expand(line[:group.start()] + a + line[group.end():], loops)]
    return [line]


def documented_commands() -> list[tuple[str, list[str]]]:
    """(where, argv after the interpreter or launcher name) of every python, accelerate and torchrun command."""
    found = []
    for doc in DOCUMENTS:
        loops: dict[str, list[str]] = {}
        for number, line in enumerate(code_lines(doc.read_text()), 1):
            loop = re.match(r"\s*for (\w+) in ([^;]+); do", line)
            if loop:
                loops[loop.group(1)] = loop.group(2).split()
                continue
            for command in expand(line, loops):
                for part in re.split(r"&&|;", command):
                    tokens = shlex.split(part, comments=True)
                    while tokens and re.match(r"^[A-Z_]+=", tokens[0]):
                        tokens = tokens[1:]
                    if tokens and re.search(r"(^|/)(python3?|accelerate|torchrun)$", tokens[0]):
                        argv = [PLACEHOLDERS.get(t, t) for t in tokens]
                        found.append((f"{doc.relative_to(ROOT)}: {' '.join(tokens)[:90]}", argv))
    return found


COMMANDS = documented_commands()


def launcher_split(argv: list[str]) -> tuple[str | None, list[str]]:
    """(script or `-m` module, its arguments); a launcher's own flags are checked by its own parser here."""
    tool = Path(argv[0]).name
    if tool == "accelerate":
        from accelerate.commands.launch import launch_command_parser

        launched = launch_command_parser().parse_args(argv[2:])
        if launched.config_file:
            assert (ROOT / launched.config_file).is_file(), launched.config_file
        return launched.training_script, launched.training_script_args
    if tool == "torchrun":
        from torch.distributed.run import get_args_parser

        launched = get_args_parser().parse_args(argv[1:])
        return launched.training_script, launched.training_script_args
    rest = argv[1:]
    if rest[0] == "-m":
        return None if rest[1] in NOT_OURS else rest[1], rest[2:]
    return rest[0], rest[1:]


def test_the_documents_hold_commands_of_every_kind():
    targets = {launcher_split(argv)[0] for _, argv in COMMANDS}
    assert {"rglcd", "rglcd.evaluate", "rglcd.space", "app.py", "train/distill.py", "train/teacher.py",
            "bench/train_vs_reference.py", "train/emoji_gpu.py"} <= targets, targets
    assert len(COMMANDS) > 40
    loop = [argv for _, argv in COMMANDS if "train/configs/emoji-64-teacher-p12.yaml" in argv]
    assert loop, "the for loop of docs/training.md expands"


@pytest.mark.parametrize("where, argv", COMMANDS, ids=[w for w, _ in COMMANDS])
def test_documented_command_parses(where: str, argv: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    target, args = launcher_split(argv)
    if target is None:
        return
    if target.startswith("train/") and target != "train/emoji_gpu.py":
        def parsed(cls, ns):
            raise Parsed(ns)

        monkeypatch.setattr("rglcd.training.cli_args.build_config", parsed)  # after every value was checked
    else:
        original = argparse.ArgumentParser.parse_args

        def parse_args(self, args=None, namespace=None):
            raise Parsed(original(self, args, namespace))

        monkeypatch.setattr(argparse.ArgumentParser, "parse_args", parse_args)
    monkeypatch.setattr("torch.set_num_threads", lambda n: None)  # --threads: not this process's
    entry = ROOT / target if target.endswith(".py") else target
    with pytest.raises(Parsed):
        code, _, err = run_entry_point(entry, args, cwd=ROOT)
        pytest.fail(f"{where}: exit {code} before its arguments were parsed: {err.strip()[-500:]}")
