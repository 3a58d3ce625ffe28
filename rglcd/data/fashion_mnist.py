"""Fashion-MNIST (Zalando, MIT) from the Debian package `dataset-fashion-mnist`: idx files read with numpy.

`apt-get install -y dataset-fashion-mnist` puts `{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz` under
/usr/share/datasets/fashion-mnist (`RGLCD_FASHION_MNIST` or a `root` argument point elsewhere). Images are 28x28
grey uint8, padded to 32x32 and scaled to [-1,1] for the models (background -1).
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from rglcd import pixels
from rglcd.data.shards import DataError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
SPLITS = {"train": "train", "test": "t10k"}


def fashion_mnist_root(root: str | Path | None = None) -> Path:
    """The folder of the idx files: `root`, else $RGLCD_FASHION_MNIST, else the Debian package's folder."""
    return Path(root or os.environ.get("RGLCD_FASHION_MNIST") or DEFAULT_ROOT)


def read_idx(path: Path) -> np.ndarray:
    """An idx file (gzipped or not) of unsigned bytes as a uint8 array of its stored shape."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as fh:
        data = fh.read()
    if data[:2] != b"\0\0" or data[2] != 0x08:
        raise DataError(f"{path} is not an idx file of unsigned bytes")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_fashion_mnist(split: str = "train", root: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(images uint8 (N,28,28), labels int64 (N,)) of split 'train' (60,000) or 'test' (10,000)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: use train or test")
    folder = fashion_mnist_root(root)
    found = {}
    for kind, rank in (("images", 3), ("labels", 1)):
        stem = f"{SPLITS[split]}-{kind}-idx{rank}-ubyte"
        path = next((p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()), None)
        if path is None:
            raise DataError(f"Fashion-MNIST not found in {folder} ({stem}[.gz]): install the Debian package "
                            f"dataset-fashion-mnist (apt-get install -y dataset-fashion-mnist) or set "
                            f"RGLCD_FASHION_MNIST to a folder with the idx files")
        found[kind] = read_idx(path)
    images, labels = torch.from_numpy(found["images"].copy()), torch.from_numpy(found["labels"].astype(np.int64))
    if images.ndim != 3 or len(images) != len(labels):
        raise DataError(f"Fashion-MNIST {split} in {folder}: {tuple(images.shape)} images, {len(labels)} labels")
    return images, labels


def padded_model_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N,28,28) -> float (N,1,32,32) in [-1,1] (`rglcd.pixels.to_model_range`), padded by 2 pixels of
    background (-1): the models' input."""
    return torch.nn.functional.pad(pixels.to_model_range(images.unsqueeze(1)), (2, 2, 2, 2), value=-1.0)




class FashionMNISTBatches:
    """Random (images (B,1,32,32) in [-1,1], class labels (B,)) batches of one split, drawn from a generator."""

    def __init__(self, split: str = "train", root: str | Path | None = None) -> None:
        self.images, self.labels = load_fashion_mnist(split, root)
        self.size = len(self.labels)

    def batch(self, batch_size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.randint(self.size, (batch_size,), generator=generator)
        return padded_model_input(self.images[idx]), self.labels[idx]
