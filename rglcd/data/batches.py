"""Training batches for the distillation trainer from any data source: (latents, text states, captions).

- `emoji`: the embedded family's cached tensors (`rglcd.data.emoji.emoji_training_tensors`).
- a webdataset shard pattern (`data/{00000..00099}.tar`, CC12M / LAION layout), an image folder with captions, or a
  Hugging Face `datasets` set (`hf:` + a save_to_disk folder, local data folder or hub id, optional `@split`):
  images and captions are encoded online with the family's VAE and text encoder, or once into a cache of latents
  and text states (`cache=True`, for data sets that fit on disk).

The emoji sources and latent caches draw their randomness from the step's generator, so a resumed run sees the
batches the uninterrupted run would have seen; streamed sources keep their position in `state_dict()` (saved in each
checkpoint) and resume as `rglcd.data.stream` says, without decoding a consumed sample again.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from rglcd.data.emoji import (CAPTION_SETS, drop_captions, emoji_training_tensors, first_phrasings,
                              load_training_tensors, sample_anchored_batch, sample_caption_batch)
from rglcd.data.shards import DataError, HFDatasetTable, ImageFolderTable, list_shards
from rglcd.data.stream import ShardStream, StreamOptions, TableStream, open_stream
from rglcd.files import atomic_path
from rglcd.loading import cache_dir
from rglcd.models import encode_latents

Batch = tuple[torch.Tensor, torch.Tensor, list[str]]


class EmojiBatches:
    """Random (latent, caption phrasing) pairs of the embedded emoji set, or of a training-tensor file
    (`tensors:PATH`, the same layout, e.g. made on another machine by `rglcd.devicepack`); `phrasings`: draw from
    the first this many caption phrasings only (`rglcd.data.emoji.first_phrasings`); `caption_set`: the emoji set's
    phrasings, 'templates', 'wide' or 'words' (`rglcd.data.emoji.CAPTION_SETS`)."""

    def __init__(self, family: Any, include_flags: bool = False, limit: int | None = None,
                 data: dict | None = None, phrasings: int | None = None, caption_set: str = "templates") -> None:
        data = data if data is not None else emoji_training_tensors(family, include_flags, limit, caption_set)
        self.data = first_phrasings(data, phrasings)
        self.empty = self.data["empty"].float()
        self.captions: list[str] = self.data["captions"]
        self.caption_states = self.data["context"].flatten(0, 1)  # (concepts * templates, L, D), order of captions
        self.latent_shape = tuple(self.data["latents"].shape[1:])
        self.size = len(self.data["latents"])

    def batch(self, batch_size: int, generator: torch.Generator, cfg_dropout: float = 0.0) -> Batch:
        return sample_caption_batch(self.data, batch_size, generator, cfg_dropout)

    def named_batch(self, batch_size: int, generator: torch.Generator, cfg_dropout: float = 0.0
                    ) -> tuple[torch.Tensor, torch.Tensor, list[str], torch.Tensor]:
        """`batch` (the same draws) and the states (B,L,D) of each sample's concept under phrasing 0, its bare name
        in the emoji caption sets (`rglcd.data.emoji.sample_anchored_batch`)."""
        return sample_anchored_batch(self.data, batch_size, generator, cfg_dropout)

    @property
    def name_states(self) -> torch.Tensor:
        """Phrasing 0 (the bare name) of every concept, (concepts, L, D): a name-only caption table."""
        return self.data["context"][:, 0]

    def phrase(self, concept: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """Caption ids (B,) into `caption_states` / `captions`: concepts (B,) each under a random phrasing."""
        n_phrasings = self.data["context"].shape[1]
        return concept * n_phrasings + torch.randint(n_phrasings, concept.shape, generator=generator)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class EncodedBatches:
    """Images + captions of a shard pattern, image folder or HF data set, encoded with the family's VAE and text
    encoder in the training process, batched.

    The samples stream from DataLoader workers that decode, resize and crop them (`rglcd.data.stream`: shards split
    by rank and worker, epoch or resampled mode, a shuffle buffer; folders and hf: sets by a `DistributedSampler`);
    the stream's position is the state, and a resume decodes none of the consumed samples again. With `cache`, this
    rank's share is encoded once into a file under `cache_root` and then sampled at random like the emoji set.
    """

    def __init__(self, spec: str, family: Any, resolution: int, cache: bool = False,
                 cache_root: Path | None = None, rank: int = 0, world: int = 1, encode_batch: int = 32,
                 stream: StreamOptions = StreamOptions()) -> None:
        self.spec, self.family, self.resolution = spec, family, resolution
        self.rank, self.world, self.encode_batch, self.stream_options = rank, world, encode_batch, stream
        self.table: ImageFolderTable | HFDatasetTable | None = (
            HFDatasetTable(spec, resolution) if spec.startswith("hf:")
            else ImageFolderTable(spec, resolution) if Path(spec).is_dir() else None)
        self.empty = family.encode([""])[0].float().cpu()
        self.sample_posterior = False  # draw each batch's latents from the VAE posterior (the step's generator)
        self.cached: dict[str, Any] | None = self._load_or_build_cache(cache_root) if cache else None
        self.source: ShardStream | TableStream | None = (
            None if cache else open_stream(spec, self.table, resolution, rank, world, stream))
        if self.cached is not None:  # the caption table teacher trajectories draw prompts from
            self.captions, self.caption_states = self.cached["captions"], self.cached["context"]
        probe = self._encode([torch.zeros(3, resolution, resolution)], [""])[0]
        self.latent_shape = tuple(probe.shape[1:])

    def _encode(self, images: list[torch.Tensor], texts: list[str], generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            z = encode_latents(self.family.vae, torch.stack(images), self.encode_batch, generator).float().cpu()
            ctx = self.family.encode(texts).float().cpu()
        return z, ctx

    def _samples(self) -> Iterator[tuple[torch.Tensor, str]]:
        """This rank's (image in [-1,1], caption) samples, once, in order (epoch 0, no shuffle)."""
        once = StreamOptions("epoch", 0, self.stream_options.num_workers, self.stream_options.seed)
        source = (TableStream(self.table, repr(self.spec), self.rank, self.world, once, shuffle=False)
                  if self.table is not None else ShardStream(self.spec, self.resolution, self.rank, self.world, once))
        return source.one_pass(self.encode_batch)

    def _load_or_build_cache(self, cache_root: Path | None) -> dict[str, Any]:
        key = hashlib.sha1(f"{Path(self.spec).resolve()}|{self.resolution}|{self.family.name}|{self.rank}/"
                           f"{self.world}".encode()).hexdigest()[:16]
        path = (cache_root or cache_dir() / "latents") / f"{key}.pt"
        if path.is_file():
            return torch.load(path, weights_only=True)
        from tqdm.auto import tqdm

        images, texts, zs, ctxs = [], [], [], []
        for image, text in tqdm(self._samples(), desc="encoding latents", disable=self.rank != 0):
            images.append(image)
            texts.append(text)
            if len(images) == self.encode_batch:
                z, c = self._encode(images, texts[-len(images):])
                zs.append(z.half()), ctxs.append(c.half())
                images = []
        if images:
            z, c = self._encode(images, texts[-len(images):])
            zs.append(z.half()), ctxs.append(c.half())
        data = {"latents": torch.cat(zs), "context": torch.cat(ctxs), "captions": texts}
        with atomic_path(path) as tmp:
            torch.save(data, tmp)
        return data

    def batch(self, batch_size: int, generator: torch.Generator, cfg_dropout: float = 0.0) -> Batch:
        if self.cached is not None:
            idx = torch.randint(len(self.cached["captions"]), (batch_size,), generator=generator)
            z, ctx = self.cached["latents"][idx].float(), self.cached["context"][idx].float()
            texts = [self.cached["captions"][i] for i in idx.tolist()]
        else:
            samples = self.source.take(batch_size)
            texts = [t for _, t in samples]
            z, ctx = self._encode([im for im, _ in samples], texts, generator if self.sample_posterior else None)
        ctx, texts = drop_captions(ctx, texts, self.empty, cfg_dropout, generator)
        return z, ctx, texts

    def state_dict(self) -> dict:
        return self.source.state_dict() if self.source is not None else {}

    def load_state_dict(self, state: dict) -> None:
        if self.source is not None and state:
            self.source.load_state_dict(state)


def training_batches(spec: str, family: Any, resolution: int | None = None, cache: bool = False,
                     include_flags: bool = False, limit: int | None = None, rank: int = 0, world: int = 1,
                     phrasings: int | None = None, caption_set: str = "templates",
                     stream: StreamOptions = StreamOptions()) -> EmojiBatches | EncodedBatches:
    """The batch source named by `spec`: 'emoji', a shard pattern (*.tar, braces), an image folder or 'hf:...'.
    `phrasings` (emoji and tensors: data only): draw from the first this many caption phrasings; `caption_set`
    (emoji data only): 'templates', 'wide' or 'words' (`rglcd.data.emoji.CAPTION_SETS`); `stream` (shard, folder
    and hf: data): mode, shuffle buffer, workers and seed of the stream (`rglcd.data.stream.StreamOptions`)."""
    check_data_source(spec, phrasings, caption_set)
    if spec == "emoji":
        return EmojiBatches(family, include_flags, limit, phrasings=phrasings, caption_set=caption_set)
    if spec.startswith("tensors:"):
        try:
            return EmojiBatches(family, data=load_training_tensors(spec[len("tensors:"):]), phrasings=phrasings)
        except FileNotFoundError as err:
            raise DataError(str(err)) from err
    return EncodedBatches(spec, family, resolution or family.resolution, cache, rank=rank, world=world,
                          stream=stream)


def check_data_source(spec: str, phrasings: int | None = None, caption_set: str = "templates") -> None:
    """DataError (one line, before a run writes anything) when `spec` names no data source `training_batches`
    reads, a tensors: file is missing, or --phrasings / --captions do not apply to it."""
    if phrasings is not None and not (spec == "emoji" or spec.startswith("tensors:")):
        raise DataError("--phrasings applies to the emoji data (emoji or tensors:) only")
    if caption_set != "templates" and spec != "emoji":
        raise DataError("--captions applies to the emoji data only (a tensors: file holds its own captions)")
    if caption_set not in CAPTION_SETS:
        raise DataError(f"unknown --captions {caption_set!r}: use {' or '.join(CAPTION_SETS)}")
    if spec.startswith("tensors:") and not Path(spec[len("tensors:"):]).is_file():
        raise DataError(f"training tensors not found: {spec[len('tensors:'):]}")
    if ".tar" in spec:
        list_shards(spec)  # a pattern that matches no file fails here
        return
    if spec == "emoji" or spec.startswith(("tensors:", "hf:")) or Path(spec).is_dir():
        return
    raise DataError(f"unknown data source {spec!r}: use 'emoji', tensors:<training-tensor file>, a webdataset shard pattern (e.g. "
                    f"'shards/{{00000..00009}}.tar'), a folder of captioned images or "
                    f"hf:<data set folder or hub id>[@split]")
