"""The newcomer's documents hold together: README.md stays short, every relative markdown link in README.md,
docs/*.md and results/README.md points at a file that exists, and every results/ folder is linked from one of them
(results/archive/'s folders count one by one). Reads text files only: well under a second."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README_MAX_WORDS = 1200
FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
CODE_SPAN = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, ...


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "results" / "README.md"]


def relative_links(doc: Path) -> list[tuple[str, Path]]:
    """(link as written, the path it resolves to) for each relative link outside code."""
    text = CODE_SPAN.sub("", FENCE.sub("", doc.read_text(encoding="utf-8")))
    links = []
    for target in LINK.findall(text):
        path = target.split("#", 1)[0]
        if not path or EXTERNAL.match(target):
            continue
        links.append((target, (doc.parent / path).resolve()))
    return links


def test_readme_is_at_most_1200_words():
    words = len((ROOT / "README.md").read_text(encoding="utf-8").split())  # as `wc -w README.md` counts
    assert words <= README_MAX_WORDS, f"README.md has {words} words (at most {README_MAX_WORDS}): move detail to docs/"


def test_relative_links_point_at_files_that_exist():
    missing = [f"{doc.relative_to(ROOT)}: {target}" for doc in documents() if doc.is_file()
               for target, path in relative_links(doc) if not path.exists()]
    assert not missing, "links to missing files:\n" + "\n".join(missing)


def test_every_results_folder_is_linked():
    results = ROOT / "results"
    assert (results / "README.md").is_file(), "results/README.md (the index of results/) is missing"
    linked = {path for doc in documents() if doc.is_file() for _, path in relative_links(doc)}
    archive = results / "archive"
    folders = [p for p in sorted(results.iterdir()) if p.is_dir() and p != archive and p.name != "cache"]
    folders += [p for p in sorted(archive.iterdir()) if p.is_dir()] if archive.is_dir() else []
    unlinked = [str(f.relative_to(ROOT)) for f in folders
                if not any(path == f.resolve() or f.resolve() in path.parents for path in linked)]
    assert not unlinked, ("results folders no document links (link them from the doc that reads them, or from "
                          "results/README.md):\n" + "\n".join(unlinked))
