"""Prompt sets for evaluation: the emoji-64 sets (with their ground-truth renders as the real-image reference) and
loaders for the benchmarks of the papers, from local files or hub data sets.

    load_prompt_set("heldout")                 217 held-out emoji concepts (never trained on) + their renders
    load_prompt_set("heldout-val")             their validation half (109): every choice is made here
    load_prompt_set("heldout-test")            their test half (108): reported once per shipped model, never chosen on
    load_prompt_set("heldout-val-free")        the validation half under evaluation-only phrasings ("cat clipart");
                                               also heldout-test-free (other phrasings): free text, as users type
    load_prompt_set("train", limit=256)        training concepts (flags left out), an evenly spaced subset
    load_prompt_set("eval-heldout")            the 16 held-out prompts of the emoji-64 model cards (also eval-train)
    load_prompt_set("hpsv2:photo")             HPSv2 benchmark prompts: anime, concept-art, paintings, photo, or all
    load_prompt_set("parti:Animals")           PartiPrompts (optionally one Category)
    load_prompt_set("coco", source=".../captions_val2014.json", limit=30000)   COCO captions, one per image
    load_prompt_set("file:my-prompts.txt")     any .txt (one per line), .json, .jsonl, .tsv, .csv list

`source` is a local file or folder, or `hub:<dataset id>` (huggingface_hub download, cached); every failure
(missing file, offline hub, unknown format) is one `PromptSetError` line that says what to do.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from rglcd.data import emoji

HPSV2_STYLES: tuple[str, ...] = ("anime", "concept-art", "paintings", "photo")
HPSV2_HUB = "zhwang/HPDv2"  # benchmark/<style>.json, each a JSON list of prompt strings (800 per style)
PARTI_HUB = "nateraw/parti-prompts"  # PartiPrompts (Prompt, Category, Challenge, Note) as a hub data set
PROMPT_KEYS: tuple[str, ...] = ("prompt", "Prompt", "caption", "text")
TABLE_SUFFIXES: tuple[str, ...] = (".txt", ".json", ".jsonl", ".tsv", ".csv", ".parquet")


class PromptSetError(ValueError):
    """A prompt set that cannot be had (unknown name, missing file, offline hub); the message says what to do."""


@dataclass(frozen=True)
class PromptSet:
    """Prompts to evaluate on, and where a paired real-image reference exists, a function
    `reference(size) -> uint8 (N,3,size,size)` giving image i for prompt i (used for Frechet distances); `names`:
    the concept name behind each prompt, where the set phrases named concepts (the emoji sets); `phrasings`: the
    phrasing ("{} clipart") of each prompt of a phrased set."""

    name: str
    prompts: list[str]
    source: str
    reference: Callable[[int], torch.Tensor] | None = None
    names: list[str] | None = None
    phrasings: list[str] | None = None


def even_subset(items: list, limit: int | None) -> list:
    """`limit` items evenly spaced over `items` (all of them when limit is None or >= len)."""
    if limit is None or limit >= len(items):
        return list(items)
    if limit < 1:
        raise PromptSetError(f"a prompt limit must be >= 1, got {limit}")
    return [items[i * len(items) // limit] for i in range(limit)]


def emoji_renders(names: list[str]) -> Callable[[int], torch.Tensor]:
    """Reference for emoji concept prompts: size -> uint8 (N,3,size,size) OpenMoji renders, in the order of names."""

    def reference(size: int) -> torch.Tensor:
        index = {c.name: c for c in emoji.list_concepts()}
        missing = [n for n in names if n not in index]
        if missing:
            raise PromptSetError(f"no emoji render for {len(missing)} prompts, e.g. {missing[0]!r}")
        return emoji.renders([index[n] for n in names], size)

    return reference


EMOJI_SETS: tuple[str, ...] = ("heldout", "heldout-val", "heldout-test", "heldout-val-free", "heldout-test-free",
                               "train", "eval-heldout", "eval-train")


def _emoji_set(split: str, limit: int | None) -> PromptSet:
    repo = emoji.ASSETS.parent
    if split.startswith(("heldout-val", "heldout-test")):
        half = split.split("-")[1]
        names = even_subset(emoji.heldout_half(half), limit)
        where = f"assets/prompts/emoji-heldout-{half}.txt"
        if split.endswith("-free"):
            phrasings = emoji.EVAL_PHRASINGS[half]
            return PromptSet(split, emoji.phrased_prompts(names, half), f"{where}, phrased with "
                             f"rglcd.data.emoji.EVAL_PHRASINGS['{half}']", emoji_renders(names), names,
                             [phrasings[i % len(phrasings)] for i in range(len(names))])
        return PromptSet(split, names, where, emoji_renders(names), names)
    if split == "heldout":
        names = sorted(emoji.heldout_names())
        where = str(emoji.HELDOUT_FILE.relative_to(repo))
    elif split == "train":
        names = [c.name for c in emoji.training_concept_list()]
        where = "rglcd.data.emoji.training_concept_list() (train split, flags left out)"
    else:
        path = emoji.ASSETS / "prompts" / f"emoji-{split}.txt"
        names, where = emoji.read_prompts(path), str(path.relative_to(repo))
    names = even_subset(names, limit)
    return PromptSet(split, names, where, emoji_renders(names), names)


def fetch_hub_files(repo: str, patterns: list[str]) -> Path:
    """Local folder of a hub data set holding the files matching `patterns` (downloaded once, then cached)."""
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo, repo_type="dataset", allow_patterns=patterns))
    except Exception as err:  # noqa: BLE001 (offline, unknown repo, gated: the same advice)
        raise PromptSetError(
            f"could not get hub data set '{repo}' ({type(err).__name__}; offline or not cached?): download it where "
            f"the hub is reachable (huggingface-cli download --repo-type dataset {repo}) and pass the local "
            f"file or folder as the prompt source") from err


def read_prompt_table(path: Path, column: str | None = None, where: dict[str, str] | None = None) -> list[str]:
    """Prompts from one file: .txt (a line each), .json (list of strings or of records, or COCO captions),
    .jsonl, .tsv/.csv (a column named `column` or one of PROMPT_KEYS), .parquet (needs pyarrow).
    `where` keeps only records whose fields equal the given values (e.g. {"Category": "Animals"})."""
    if not path.is_file():
        raise PromptSetError(f"prompt file not found: {path}")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return emoji.read_prompts(path)
    try:
        if suffix == ".json":
            data = json.loads(path.read_text())
            if isinstance(data, dict) and "annotations" in data:
                return coco_captions(data)
            records = data
        elif suffix == ".jsonl":
            records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        elif suffix in (".tsv", ".csv"):
            with open(path, newline="", encoding="utf-8") as fh:
                records = list(csv.DictReader(fh, delimiter="\t" if suffix == ".tsv" else ","))
        elif suffix == ".parquet":
            import pandas

            records = pandas.read_parquet(path).to_dict("records")
        else:
            raise PromptSetError(f"unknown prompt file type {path.name}: use one of {', '.join(TABLE_SUFFIXES)}")
    except ImportError as err:
        raise PromptSetError(f"reading {path.name} needs {err.name} (pip install pyarrow), or pass a .tsv") from err
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as err:
        raise PromptSetError(f"could not parse {path}: {err}") from err
    return _prompts_from_records(records, path, column, where or {})


def _prompts_from_records(records: object, path: Path, column: str | None, where: dict[str, str]) -> list[str]:
    if not isinstance(records, list):
        raise PromptSetError(f"{path} holds no list of prompts")
    if all(isinstance(r, str) for r in records):
        return [r.strip() for r in records if r.strip()]
    keys = (column,) if column else PROMPT_KEYS
    out = []
    for rec in records:
        if not isinstance(rec, dict):
            raise PromptSetError(f"{path}: mixed records, expected strings or objects")
        key = next((k for k in keys if k in rec), None)
        if key is None:
            raise PromptSetError(f"{path}: no prompt column (looked for {', '.join(keys)}; has {', '.join(rec)})")
        if all(str(rec.get(k)) == v for k, v in where.items()) and str(rec[key]).strip():
            out.append(str(rec[key]).strip())
    return out


def coco_captions(annotations: dict) -> list[str]:
    """One caption per image from a COCO captions file (captions_val2014.json layout): for each image id in
    increasing order, its caption with the smallest annotation id."""
    first: dict[int, tuple[int, str]] = {}
    for ann in annotations["annotations"]:
        key = (ann.get("id", 0), ann["caption"].strip())
        if ann["image_id"] not in first or key < first[ann["image_id"]]:
            first[ann["image_id"]] = key
    return [first[i][1] for i in sorted(first)]


def _local_or_hub(source: str | None, default_hub: str | None, patterns: list[str], what: str) -> Path:
    """The file or folder to read a benchmark from: a local path, `hub:<id>`, or the default hub data set."""
    if source is None:
        if default_hub is None:
            raise PromptSetError(f"{what} needs a prompt source: a local file or folder, or hub:<dataset id>")
        return fetch_hub_files(default_hub, patterns)
    if source.startswith("hub:"):
        return fetch_hub_files(source[4:], patterns)
    path = Path(source).expanduser()
    if not path.exists():
        raise PromptSetError(f"{what} source not found: {path}")
    return path


def _find_file(folder: Path, patterns: list[str], what: str) -> Path:
    """The first file under `folder` matching one of the glob patterns, in pattern order then name order."""
    if folder.is_file():
        return folder
    for pattern in patterns:
        hits = sorted(p for p in folder.rglob(pattern) if p.is_file())
        if hits:
            return hits[0]
    raise PromptSetError(f"no {what} file ({', '.join(patterns)}) under {folder}")


def hpsv2_prompts(style: str, source: str | None) -> dict[str, list[str]]:
    """HPSv2 benchmark prompts {style: prompts} for one style or 'all' (the four in HPSV2_STYLES order), from a
    folder holding `<style>.json` files (the `benchmark/` folder of zhwang/HPDv2) or that hub data set."""
    styles = HPSV2_STYLES if style == "all" else (style,)
    if style != "all" and style not in HPSV2_STYLES:
        raise PromptSetError(f"unknown HPSv2 style '{style}': use one of {', '.join(HPSV2_STYLES)} or all")
    root = _local_or_hub(source, HPSV2_HUB, [f"benchmark/{s}.json" for s in styles], "HPSv2")
    return {s: read_prompt_table(_find_file(root, [f"{s}.json"], f"HPSv2 {s}")) for s in styles}


def load_prompt_set(spec: str, source: str | None = None, limit: int | None = None) -> PromptSet:
    """A named prompt set (see the module docstring for the names); `limit` keeps an evenly spaced subset."""
    name, _, variant = spec.partition(":")
    if spec in EMOJI_SETS:
        return _emoji_set(spec, limit)
    if name == "hpsv2":
        sets = hpsv2_prompts(variant or "all", source)
        prompts = [p for style in sets.values() for p in style]
        return PromptSet(spec, even_subset(prompts, limit), source or f"hub:{HPSV2_HUB}")
    if name == "parti":
        root = _local_or_hub(source, PARTI_HUB, ["*.tsv", "*.parquet", "*.csv", "*.json*"], "PartiPrompts")
        path = _find_file(root, ["PartiPrompts.tsv", "*.tsv", "*.parquet", "*.csv", "*.json*"], "PartiPrompts")
        prompts = read_prompt_table(path, "Prompt", {"Category": variant} if variant else None)
        if not prompts:
            raise PromptSetError(f"no PartiPrompts in category '{variant}' in {path}")
        return PromptSet(spec, even_subset(prompts, limit), str(path))
    if name == "coco":
        root = _local_or_hub(source, None, ["annotations/captions_*.json", "*.json*"], "COCO captions")
        path = _find_file(root, ["captions_val2014.json", "captions_val2017.json", "captions_*.json", "*.json*"],
                          "COCO captions")
        return PromptSet(spec, even_subset(read_prompt_table(path), limit), str(path))
    if name == "file" or Path(spec).suffix.lower() in TABLE_SUFFIXES:
        path = Path(variant if name == "file" else spec).expanduser()
        return PromptSet(path.stem, even_subset(read_prompt_table(path), limit), str(path))
    raise PromptSetError(f"unknown prompt set '{spec}': use {', '.join(EMOJI_SETS)}, "
                         f"hpsv2[:style], parti[:category], coco, or file:PATH")
