"""Image-caption data for real-scale training: what a source is made of, and random access to tables.

Shards: `dir/{00000..00099}.tar` (brace ranges) or globs, listed here and streamed by `rglcd.data.stream` on the
webdataset library; each sample is the tar members sharing a key, an image (`jpg`, `jpeg`, `png`, `webp`) and a
caption (`txt`, or `json` with a "caption"/"text"/"prompt" field).
Image folders: images with a same-named `.txt` beside them, or a `metadata.jsonl` with `file_name` and `text`
(the Hugging Face `imagefolder` layout); Hugging Face `datasets` sets (`hf:`). An empty result is an error that says
why. Images come out as float (3, R, R) in [-1, 1] after a shorter-side resize and centre crop, written in torch.
"""

from __future__ import annotations

import glob
import json
from pathlib import Path

import numpy as np
import torch
from braceexpand import braceexpand

from rglcd.pixels import resize_and_center_crop, to_model_range

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_KEYS = ("caption", "text", "prompt")


class DataError(ValueError):
    """The data source is unusable (nothing matches, nothing passes the filters); the message says which."""


def list_shards(pattern: str) -> list[str]:
    """Shard files matching a brace (`{00000..00099}`, zero padding kept) and/or glob pattern, sorted; DataError when
    none exists."""
    found = sorted({p for part in braceexpand(pattern) for p in glob.glob(part)})
    if not found:
        raise DataError(f"no shard matches {pattern!r}")
    return found


def caption_of(record: dict[str, bytes]) -> str | None:
    """The caption of a webdataset record: `txt`, else a caption-like field of `json` (None: neither, or bad json)."""
    if "txt" in record:
        return record["txt"].decode("utf-8", "replace").strip()
    if "json" in record:
        try:
            meta = json.loads(record["json"])
        except ValueError:
            return None
        if not isinstance(meta, dict):
            return None
        for key in CAPTION_KEYS:
            if isinstance(meta.get(key), str):
                return meta[key].strip()
    return None


def resize_center_crop(image: np.ndarray, resolution: int) -> torch.Tensor:
    """uint8 (H,W,3) -> float (3, R, R) in [-1,1]: shorter side to R (bilinear, antialiased), then centre crop.
    (A copy: decoded datasets may hand over read-only arrays, which torch.from_numpy warns about.)"""
    x = to_model_range(torch.from_numpy(np.array(image)).permute(2, 0, 1).unsqueeze(0))
    return resize_and_center_crop(x, resolution, "bilinear")[0].clamp(-1, 1)


def list_image_folder(folder: str | Path) -> list[tuple[Path, str]]:
    """(image path, caption) pairs of an image folder (metadata.jsonl or same-named .txt files)."""
    root = Path(folder)
    if not root.is_dir():
        raise DataError(f"image folder not found: {root}")
    meta = root / "metadata.jsonl"
    pairs: list[tuple[Path, str]] = []
    if meta.is_file():
        for line in meta.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                text = next((row[k] for k in CAPTION_KEYS if isinstance(row.get(k), str)), "")
                pairs.append((root / row["file_name"], text.strip()))
    else:
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower().lstrip(".") in IMAGE_EXTS):
            txt = path.with_suffix(".txt")
            pairs.append((path, txt.read_text().strip() if txt.is_file() else ""))
    pairs = [(p, t) for p, t in pairs if t and p.is_file()]
    if not pairs:
        raise DataError(f"no captioned image in {root} (metadata.jsonl with file_name/text, or image + .txt)")
    return pairs


class ImageFolderTable:
    """Random access to an image folder: `table[i]` -> (image (3,R,R) in [-1,1], caption)."""

    def __init__(self, folder: str | Path, resolution: int) -> None:
        self.pairs, self.resolution = list_image_folder(folder), resolution

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        from PIL import Image

        path, text = self.pairs[i]
        with Image.open(path) as im:
            return resize_center_crop(np.asarray(im.convert("RGB")), self.resolution), text


class HFDatasetTable:
    """Random access to a Hugging Face `datasets` image-caption set: `table[i]` -> (image (3,R,R) in [-1,1], caption).

    `source` is `hf:` + a `save_to_disk` folder, a local data folder (parquet / imagefolder) or a hub id, with an
    optional `@split` (default `train`). The image column is the first `Image` feature; the caption column the first
    of caption/text/prompt, else the first string column. Rows with an empty caption are skipped.
    """

    def __init__(self, source: str, resolution: int) -> None:
        try:
            import datasets
        except ImportError as err:
            raise DataError("--data hf:... needs the `datasets` package (pip install datasets)") from err
        name, _, split = source.removeprefix("hf:").partition("@")
        self.resolution = resolution
        self.ds = self._open(datasets, name, split or "train")
        features = self.ds.features
        self.image_key = next((k for k, f in features.items() if isinstance(f, datasets.Image)), None)
        strings = [k for k, f in features.items() if getattr(f, "dtype", None) in ("string", "large_string")]
        self.text_key = next((k for k in CAPTION_KEYS if k in strings), strings[0] if strings else None)
        if self.image_key is None or self.text_key is None:
            raise DataError(f"data set {name!r} has no image column and caption column (columns: "
                            f"{', '.join(features)}); need an Image feature and a caption/text/prompt string")
        self.rows = [i for i, t in enumerate(self.ds[self.text_key]) if isinstance(t, str) and t.strip()]
        if not self.rows:
            raise DataError(f"every one of the {len(self.ds)} rows of {name!r} has an empty {self.text_key!r}")

    @staticmethod
    def _open(datasets: object, name: str, split: str) -> object:
        path = Path(name)
        if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
            ds = datasets.load_from_disk(str(path))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise DataError(f"data set {name!r} has no split {split!r} (splits: {', '.join(ds)})")
                ds = ds[split]
            return ds
        if not path.exists() and "/" not in name:
            raise DataError(f"data set not found: {name!r} is neither a local folder nor a hub id (owner/name)")
        try:
            return datasets.load_dataset(name, split=split)
        except Exception as err:  # noqa: BLE001 (offline hub, missing split, unreadable files: one clear message)
            raise DataError(
                f"could not load the data set {name!r} split {split!r} ({type(err).__name__}: {err}). Offline, "
                f"save it where the hub is reachable (datasets.load_dataset({name!r}, split={split!r})"
                f".save_to_disk(DIR)) and pass --data hf:DIR") from None

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str]:
        row = self.ds[self.rows[i]]
        image = np.asarray(row[self.image_key].convert("RGB"))
        return resize_center_crop(image, self.resolution), row[self.text_key].strip()
