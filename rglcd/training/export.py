"""Where a trainer writes what it makes: never into the shipped `assets/` unless asked with `--replace-shipped`.

By default a trained member of a family is exported to `runs/<family>/<member>` (relative to the current folder,
like the checkpoints) and registered in `runs/<family>/family.json`, a copy of the shipped family file made on first
use whose entries (VAE, text encoder, scheduler, reward, the other members) still name the shipped folders;
`--family runs/<family>` then loads the shipped family with the new member in place. A family file outside
`assets/` (e.g. `runs/emoji-64/ablations`, made by `python -m rglcd.training.export emoji-64 runs/emoji-64/ablations`)
is registered into directly, and its members export beside it. `--replace-shipped` exports into the shipped
family's own folder and registers there: the way the shipped models were made.
"""

from __future__ import annotations

from pathlib import Path

from rglcd.files import write_json
from rglcd.inputs import OneLineParser, exit_usage
from rglcd.loading import ASSETS
from rglcd.models import Family, ModelLoadError, load_family, relocated_spec

AUTO = "auto"  # export_dir default: <the family file's folder>/<member>
RUNS = Path("runs")


def is_shipped(path: str | Path) -> bool:
    """Whether `path` lies inside the repository's `assets/` folder (resolved: `..` and links count)."""
    try:
        Path(path).resolve().relative_to(ASSETS.resolve())
    except ValueError:
        return False
    return True


def refuse_shipped(path: str | Path, replace_shipped: bool) -> None:
    """Raise ValueError (one line, before any work) when `path` is under `assets/` and `replace_shipped` is off."""
    if not replace_shipped and is_shipped(path):
        raise ValueError(f"{path} is inside assets/ (the shipped models): pass --replace-shipped to overwrite a "
                         "shipped model, or leave --export-dir out to export under runs/")


def registry_file(family: Family, replace_shipped: bool = False, runs: Path = RUNS, write: bool = True) -> Path:
    """The family file a trained member is registered in: the family's own file unless it is shipped (then
    `runs/<name>/family.json`, written from the shipped one if absent and `write`) or with `replace_shipped`; a
    preset with no file gets `runs/<name>/family.json` from its spec. Only the runs copy is written here."""
    if family.root is not None and (replace_shipped or not is_shipped(family.root)):
        return family.root / "family.json"
    path = runs / family.name / "family.json"
    return path if path.is_file() or not write else copy_family(family, path.parent)


def copy_family(family: Family, folder: Path) -> Path:
    """Write `folder/family.json`: the family's spec with every local path rewritten to name the same files from
    `folder` (`rglcd.models.relocated_spec`). Returns the file."""
    return write_json(folder / "family.json", relocated_spec(family, folder))


def main(argv: list[str] | None = None) -> int:
    """`python -m rglcd.training.export FAMILY FOLDER`: a copy of a family's file in FOLDER (a family of your own to
    train members into, e.g. runs/emoji-64/ablations); refuses a folder under assets/ or one that has a family.json."""
    parser = OneLineParser(prog="python -m rglcd.training.export", description=main.__doc__)
    parser.add_argument("family", help="preset name, family.json or its folder")
    parser.add_argument("folder", help="where the new family.json goes")
    args = parser.parse_args(argv)
    folder = Path(args.folder)
    try:
        refuse_shipped(folder, replace_shipped=False)
        if (folder / "family.json").exists():
            raise ValueError(f"{folder / 'family.json'} exists already")
        print(copy_family(load_family(args.family), folder))
    except (ValueError, ModelLoadError, OSError) as err:
        exit_usage(str(err))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


def export_plan(export_dir: str | None, family: Family | None, member: str, replace_shipped: bool = False,
                runs: Path = RUNS, write: bool = True) -> tuple[Path | None, Path | None]:
    """(export folder or None for no export, family file to register in or None): `export_dir` "auto" is
    `<registry file's folder>/<member>`. ValueError before any work when either lies in `assets/` without
    `replace_shipped`; the runs copy of a shipped family file is created here when `write` (in a multi-process run,
    by the main process alone)."""
    if export_dir is None:
        return None, None
    if family is None:
        if export_dir == AUTO:
            raise ValueError(f"--export-dir auto needs a family; give a folder (e.g. runs/{member})")
        refuse_shipped(export_dir, replace_shipped)
        return Path(export_dir), None
    if export_dir != AUTO:
        refuse_shipped(export_dir, replace_shipped)
    registry = registry_file(family, replace_shipped, runs, write)
    export = registry.parent / member if export_dir == AUTO else Path(export_dir)
    return export, registry
