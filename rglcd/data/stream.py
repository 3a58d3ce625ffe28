"""Image-caption samples for the trainers, decoded in DataLoader workers: webdataset shards and random-access tables.

Shards (`ShardStream`, on the webdataset library), rank r of P, DataLoader worker w of W:
- epoch mode: each epoch the shard list is shuffled by (seed, epoch), the same order on every rank; rank r takes
  shards r, r+P, ... (webdataset's `split_by_node`, with the caller's rank rather than an environment read) and
  worker w every W-th of those (`wds.split_by_worker`), so each sample is decoded once per epoch, by one worker of
  one rank. Resume skips, at shard granularity, every shard a consumed sample came from.
- resampled mode (the anchors' training default): each worker draws shards with replacement from the whole list
  (`wds.ResampledShards`), seeded by (seed, rank, worker, samples consumed before the stream started), so a fresh
  and a resumed stream are each a reproducible draw and no two workers share a sequence.
Then a shuffle buffer of still-encoded records (`wds.shuffle`), and in the worker: PIL decode, shorter-side resize,
centre crop, float (3, R, R) in [-1, 1].

Tables (`TableStream`: image folders and `hf:` sets): a `DistributedSampler` order (seed, epoch; rank r's share),
rows decoded in the workers; the position is the number of samples consumed, the same on every rank.

Bad data (an unreadable or truncated tar, an undecodable image, a sample without image or caption) is skipped,
counted in `skipped` and warned about (`SkippedDataWarning`, at the 1st, 2nd, 4th, 8th ... of each kind); a pass that
yields nothing usable stops with one `DataError` line.
"""

from __future__ import annotations

import io
import os
import random
import warnings
from collections import Counter, deque
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, get_worker_info

from rglcd.data.shards import IMAGE_EXTS, DataError, caption_of, list_shards, resize_center_crop

MODES = ("epoch", "resampled")
Sample = tuple[torch.Tensor, str]
UNREADABLE_TAR = "unreadable or truncated tar"


class SkippedDataWarning(UserWarning):
    """A sample or shard was skipped (the message says which and how many of that kind so far)."""


def default_workers() -> int:
    """DataLoader workers when none is asked for: min(4, CPUs - 1), one core left to the training process."""
    return max(0, min(4, (os.cpu_count() or 1) - 1))


@dataclass(frozen=True)
class StreamOptions:
    """How a rank streams its samples: `mode` epoch | resampled (shards; tables are always by epoch),
    `shuffle_buffer` records (0 or 1: none), `num_workers` DataLoader workers (None: `default_workers()`),
    `seed` of every shard order, shard draw and shuffle."""

    mode: str = "resampled"
    shuffle_buffer: int = 1000
    num_workers: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise DataError(f"unknown --data-mode {self.mode!r}: use {' or '.join(MODES)}")
        if self.shuffle_buffer < 0 or (self.num_workers or 0) < 0:
            raise DataError("--shuffle-buffer and --dataloader-num-workers must be >= 0")

    @property
    def workers(self) -> int:
        return default_workers() if self.num_workers is None else self.num_workers


def decode_record(record: dict[str, Any], resolution: int, shard: int) -> dict[str, Any]:
    """Worker side, one webdataset record -> {'key', 'shard', 'image' float (3,R,R) in [-1,1], 'caption'}, or
    {'key', 'shard', 'bad': why} for a record without image or caption or with an undecodable image."""
    from PIL import Image

    out = {"key": record.get("__key__", ""), "shard": shard}
    ext = next((e for e in IMAGE_EXTS if e in record), None)
    caption = caption_of(record)
    if ext is None:
        return {**out, "bad": "no image"}
    if not caption:
        return {**out, "bad": "no caption"}
    try:
        with Image.open(io.BytesIO(record[ext])) as im:
            pixels = np.asarray(im.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError):  # PIL's ways of saying "not an image I can read"
        return {**out, "bad": "undecodable image"}
    return {**out, "image": resize_center_crop(pixels, resolution), "caption": caption}


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """A DataLoader batch of `decode_record` outputs: images (n,3,R,R) of the good ones (n may be 0), their captions,
    keys and shards, and (why, key, shard) of the bad ones."""
    good = [s for s in samples if "bad" not in s]
    return {"images": torch.stack([s["image"] for s in good]) if good else torch.empty(0),
            "captions": [s["caption"] for s in good], "keys": [s["key"] for s in good],
            "shards": [s["shard"] for s in good], "bad": [(s["bad"], s["key"], s["shard"]) for s in samples
                                                          if "bad" in s]}


def worker_position() -> tuple[int, int]:
    """(this DataLoader worker's id, the number of workers); (0, 1) in the training process."""
    info = get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


class ShardSamples(IterableDataset):
    """Worker side of `ShardStream`: this rank's and worker's records, shuffled and decoded (`decode_record`).
    `epoch`, `skip` (shard indices) and `start` (samples consumed before) are set by the stream before each pass."""

    def __init__(self, shards: list[str], resolution: int, rank: int, world: int, options: StreamOptions) -> None:
        super().__init__()
        self.shards, self.resolution, self.rank, self.world, self.options = shards, resolution, rank, world, options
        self.index = {url: i for i, url in enumerate(shards)}
        self.epoch, self.skip, self.start = 0, frozenset(), 0
        # a resampled worker gives up after this many shard draws without a usable sample (every shard bad): enough
        # draws to cycle the list four times and to refill the shuffle buffer from one-sample shards
        self.give_up_after = 4 * len(shards) + options.shuffle_buffer + 1

    def epoch_order(self) -> list[int]:
        """This rank's shards of the epoch: the list shuffled by (seed, epoch), every `world`-th from `rank`."""
        order = list(range(len(self.shards)))
        random.Random(wds.utils.make_seed(self.options.seed, self.epoch)).shuffle(order)
        return list(islice(order, self.rank, None, self.world))

    def _urls(self, worker: int, progress: dict[str, int]) -> Iterator[dict[str, str]]:
        if self.options.mode == "epoch":
            urls: Any = wds.split_by_worker([{"url": self.shards[s]} for s in self.epoch_order()
                                             if s not in self.skip])
        else:
            urls = wds.ResampledShards(self.shards, seed=wds.utils.make_seed(self.options.seed, self.rank, self.start),
                                       worker_seed=lambda: worker, deterministic=True)
        for url in urls:
            if self.options.mode == "resampled" and progress["draws"] - progress["good_at"] > self.give_up_after:
                return
            progress["draws"] += 1
            progress["url"] = url["url"]
            yield url

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker, _ = worker_position()
        progress = {"draws": 0, "good_at": 0, "url": ""}
        failed: list[str] = []

        def on_error(exn: Exception) -> bool:  # webdataset's handler: note the shard, go on with the next record
            failed.append(progress["url"])
            return True

        def records() -> Iterator[dict[str, Any]]:
            for record in wds.tarfile_to_samples(handler=on_error)(self._urls(worker, progress)):
                yield from ({"__bad__": url} for url in failed)
                failed.clear()
                yield record
            yield from ({"__bad__": url} for url in failed)

        stream: Iterator[dict[str, Any]] = records()
        if self.options.shuffle_buffer > 1:
            rng = random.Random(wds.utils.make_seed(self.options.seed, self.rank, worker, self.epoch, self.start))
            stream = wds.shuffle(bufsize=self.options.shuffle_buffer, initial=min(100, self.options.shuffle_buffer),
                                 rng=rng)(stream)
        for record in stream:
            if "__bad__" in record:
                yield {"key": "", "shard": self.index.get(record["__bad__"], -1), "bad": UNREADABLE_TAR}
                continue
            sample = decode_record(record, self.resolution, self.index[record["__url__"]])
            if "bad" not in sample:
                progress["good_at"] = progress["draws"]
            yield sample


class TableRows(Dataset):
    """Worker side of `TableStream`: row i of an `ImageFolderTable` / `HFDatasetTable` as a `decode_record` output."""

    def __init__(self, table: Any) -> None:
        self.table = table

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        try:
            image, caption = self.table[i]
        except (OSError, ValueError):  # an unreadable or undecodable image file
            return {"key": str(i), "shard": -1, "bad": "undecodable image"}
        return {"key": str(i), "shard": -1, "image": image, "caption": caption}


class BufferedSamples:
    """Training-process side shared by the streams: DataLoader batches into a buffer of good samples, bad ones
    counted and warned about; `take(n)` pops n. A subclass gives `_loader(n)` (a new pass) and `_pass_ended()`."""

    def __init__(self, name: str, rank: int, world: int, options: StreamOptions, num_workers: int) -> None:
        self.name, self.rank, self.world, self.options = name, rank, world, options
        self.num_workers = num_workers
        self.consumed = 0  # samples taken so far, the same count on every rank (each takes its micro-batch a step)
        self.skipped: Counter[str] = Counter()
        self._ready: deque[tuple[torch.Tensor, str, int, int]] = deque()  # (image, caption, shard, pass epoch)
        self._batches: Iterator[dict[str, Any]] | None = None
        self._good_in_pass = 0

    def _dataloader(self, dataset: Dataset, n: int, **kwargs: Any) -> Iterator[dict[str, Any]]:
        return iter(DataLoader(dataset, batch_size=n, num_workers=self.num_workers, collate_fn=collate_samples,
                               **kwargs))

    def _loader(self, n: int) -> Iterator[dict[str, Any]]:
        raise NotImplementedError

    def _pass_ended(self) -> None:
        raise NotImplementedError

    def _epoch(self) -> int:
        return 0

    def _taken(self, shard: int, epoch: int) -> None:
        """A sample of `shard`, read in pass `epoch`, was consumed."""

    def nothing_usable(self) -> DataError:
        counts = ", ".join(f"{n} {why}" for why, n in sorted(self.skipped.items())) or "no sample at all"
        return DataError(f"nothing usable left in {self.name} on rank {self.rank} of {self.world} "
                         f"(skipped so far: {counts})")

    def _skip(self, why: str, key: str, where: str) -> None:
        self.skipped[why] += 1
        n = self.skipped[why]
        if n & (n - 1) == 0:  # 1st, 2nd, 4th, 8th ...: a few lines, even for a data set with many bad samples
            warnings.warn(f"skipped {key or 'a shard'} in {where}: {why} ({n} {why} skipped so far on rank "
                          f"{self.rank})", SkippedDataWarning, stacklevel=2)

    def _where(self, shard: int) -> str:
        return self.name

    def _fill(self, n: int) -> None:
        if self._batches is None:
            self._batches, self._good_in_pass = self._loader(n), 0
        try:
            batch = next(self._batches)
        except StopIteration:
            self._batches = None
            self._pass_ended()
            return
        for why, key, shard in batch["bad"]:
            self._skip(why, key, self._where(shard))
        epoch = self._epoch()
        self._ready.extend(zip(batch["images"], batch["captions"], batch["shards"], [epoch] * len(batch["shards"])))
        self._good_in_pass += len(batch["shards"])

    def take(self, n: int) -> list[Sample]:
        """The next n (image (3,R,R) in [-1,1], caption) samples of this rank."""
        while len(self._ready) < n:
            self._fill(n)
        out = []
        for _ in range(n):
            image, caption, shard, epoch = self._ready.popleft()
            self._taken(shard, epoch)
            out.append((image, caption))
        self.consumed += n
        return out

    def one_pass(self, n: int = 32) -> Iterator[Sample]:
        """Every sample of one pass from the current position, in loader order (for caches); DataError if none."""
        got = 0
        for batch in self._loader(n):
            for why, key, shard in batch["bad"]:
                self._skip(why, key, self._where(shard))
            got += len(batch["captions"])
            yield from zip(batch["images"], batch["captions"])
        if not got:
            raise self.nothing_usable()

    def _restart(self) -> None:
        self._ready.clear()
        self._batches = None


class ShardStream(BufferedSamples):
    """This rank's samples of a webdataset shard pattern (module docstring: modes, split, resume).

    State (`state_dict`, plain values): samples consumed, and in epoch mode per rank the epoch and the shards any
    consumed sample came from. Under torch.distributed with `world` ranks an epoch-mode `state_dict` gathers every
    rank's entry (a collective: call it on every rank, as accelerate's `save_state` does), since only rank 0 writes
    it; a resampled one is a count, the same on every rank, and gathers nothing."""

    def __init__(self, pattern: str, resolution: int, rank: int = 0, world: int = 1,
                 options: StreamOptions = StreamOptions()) -> None:
        shards = list_shards(pattern)
        workers = options.workers
        if options.mode == "epoch":
            if len(shards) < world:  # on every rank alike, so that none waits for one that stopped
                raise DataError(f"{len(shards)} shard(s) for {world} ranks: epoch mode gives each rank whole shards; "
                                f"write at least {world} shards or use --data-mode resampled")
            workers = min(workers, len(shards[rank::world]))  # a worker without a shard would only idle
        super().__init__(repr(pattern), rank, world, options, workers)
        self.shards = shards
        self.samples = ShardSamples(shards, resolution, rank, world, options)
        self.epoch = 0  # of the last consumed sample
        self.done: set[int] = set()  # shards a consumed sample of `epoch` came from
        self._loader_epoch = 0

    def _loader(self, n: int) -> Iterator[dict[str, Any]]:
        self.samples.epoch, self.samples.start = self._loader_epoch, self.consumed
        self.samples.skip = frozenset(self.done if self._loader_epoch == self.epoch else ())
        return self._dataloader(self.samples, n)

    def _epoch(self) -> int:
        return self._loader_epoch

    def _where(self, shard: int) -> str:
        return self.shards[shard] if shard >= 0 else self.name

    def _pass_ended(self) -> None:
        resumed_past_everything = self.samples.skip and not self._good_in_pass
        if self.options.mode == "resampled" or not (self._good_in_pass or resumed_past_everything):
            raise self.nothing_usable()
        self._loader_epoch += 1

    def _taken(self, shard: int, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch, self.done = epoch, set()
        self.done.add(shard)

    def state_dict(self) -> dict[str, Any]:
        if self.options.mode == "resampled":  # the count alone seeds the resumed draw, and it is every rank's
            return {"mode": self.options.mode, "consumed": self.consumed, "ranks": {}}
        mine = {"epoch": self.epoch, "done": sorted(self.done)}
        return {"mode": self.options.mode, "consumed": self.consumed, "ranks": gather_by_rank(self.rank, self.world,
                                                                                               mine)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume: a resampled stream is redrawn from (seed, rank, consumed); an epoch stream restarts its epoch
        without the shards recorded as started. A rank without an entry (another world size) starts epoch 0."""
        self.consumed = int(state["consumed"])
        entry = state.get("ranks", {}).get(str(self.rank)) if state.get("mode") == self.options.mode else None
        self.epoch = int(entry["epoch"]) if entry else 0
        self.done = {int(s) for s in entry["done"]} if entry else set()
        self._loader_epoch = self.epoch
        self._restart()


class TableStream(BufferedSamples):
    """This rank's rows of an image folder / `hf:` table through a DataLoader: `DistributedSampler` (rank's share,
    shuffled by (seed, epoch), padded to equal shares), decoded in workers. State: samples consumed, which with the
    share's length gives epoch and offset, so a resume draws the indices again and decodes none of the consumed."""

    def __init__(self, table: Any, name: str, rank: int = 0, world: int = 1,
                 options: StreamOptions = StreamOptions(), shuffle: bool = True) -> None:
        super().__init__(name, rank, world, options, options.workers)
        self.rows, self.shuffle = TableRows(table), shuffle
        self._next_index = 0  # of the rank's index sequence over all epochs, where the loader starts
        self._pass_from_start = True

    def order(self, epoch: int) -> list[int]:
        """Rows of this rank in `epoch`."""
        sampler = DistributedSampler(self.rows, num_replicas=self.world, rank=self.rank, shuffle=self.shuffle,
                                     seed=self.options.seed)
        sampler.set_epoch(epoch)
        return list(sampler)

    def _loader(self, n: int) -> Iterator[dict[str, Any]]:
        per_epoch = len(self.order(0))
        epoch, offset = divmod(self._next_index, per_epoch)
        indices = self.order(epoch)[offset:]
        self._next_index += len(indices)
        self._pass_from_start = offset == 0
        return self._dataloader(self.rows, n, sampler=indices)

    def _pass_ended(self) -> None:
        if not self._good_in_pass and self._pass_from_start:
            raise self.nothing_usable()

    def state_dict(self) -> dict[str, Any]:
        return {"consumed": self.consumed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.consumed = self._next_index = int(state["consumed"])
        self._restart()


def gather_by_rank(rank: int, world: int, entry: Any) -> dict[str, Any]:
    """{str(rank): entry} of every rank: all-gathered when torch.distributed runs `world` > 1 ranks, else this one's."""
    import torch.distributed as dist

    if world > 1 and dist.is_available() and dist.is_initialized() and dist.get_world_size() == world:
        entries: list[Any] = [None] * world
        dist.all_gather_object(entries, (rank, entry))
        return {str(r): e for r, e in entries}
    return {str(rank): entry}


def open_stream(spec: str, table: Any, resolution: int, rank: int, world: int, options: StreamOptions
                ) -> ShardStream | TableStream:
    """The stream of `spec`: over `table` (image folder / hf: set) when given, else over the shard pattern."""
    if table is not None:
        return TableStream(table, repr(spec), rank, world, options)
    return ShardStream(spec, resolution, rank, world, options)

