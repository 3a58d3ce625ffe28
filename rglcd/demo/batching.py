"""Micro-batching for the app's sampler: requests that wait while it is busy and ask for the same thing (the same
member at the same settings) run together as one batch.

`MicroBatcher(run_batch)` is called from many threads with `(key, item)`; one batch runs at a time in each lane
(`lane(key)`, e.g. the model a key samples: batches of different lanes run side by side). The thread that gets its
lane's turn takes the waiting items of its key, calls `run_batch(key, items)` and hands each caller its result; the
others keep waiting for theirs. A caller that will come to several lanes (one comparison going through its columns)
announces them with `session(lanes)` and passes the session with each call: the thread with a lane's turn first
waits, up to `gather_s` seconds, until no open session is still due in that lane, so that requests a moment behind
join the batch. A caller alone never waits: it is a plain lock around `run_batch(key, [item])`.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class MicroBatcher(Generic[T, R]):
    """Runs `run_batch(key, items) -> results` (one result per item, in order) for batches of up to `max_batch`
    items that share a key; an exception from `run_batch` is raised in every caller of that batch."""

    def __init__(self, run_batch: Callable[[Hashable, list[T]], list[R]], max_batch: int = 8,
                 gather_s: float = 0.5, lane: Callable[[Hashable], Hashable] = lambda key: None) -> None:
        self.run_batch, self.max_batch, self.gather_s, self.lane = run_batch, max_batch, gather_s, lane
        self._turns: dict[Hashable, threading.Lock] = {}  # per lane, held by the thread running its batch
        self._state = threading.Condition()  # guards _turns, _pending and _due
        self._pending: list[tuple[Hashable, T, Future]] = []
        self._due: Counter = Counter()  # lane -> open sessions that have not called in it yet
        self.batch_sizes: list[int] = []  # every batch's size, for tests and benches

    @contextmanager
    def session(self, lanes: Iterable[Hashable]) -> Iterator[set]:
        """Announce a caller that will call once in each of `lanes` soon; yields the session to pass with each call
        (the lanes it is still due in)."""
        due = set(lanes)
        with self._state:
            self._due.update(due)
        try:
            yield due
        finally:
            with self._state:
                self._due.subtract(due)
                due.clear()
                self._state.notify_all()

    def __call__(self, key: Hashable, item: T, session: set | None = None) -> R:
        """`item`'s result, computed in a batch with the other waiting items of `key`."""
        future: Future = Future()
        lane = self.lane(key)
        with self._state:
            self._pending.append((key, item, future))
            turn = self._turns.setdefault(lane, threading.Lock())
        self.leave(session, lane)
        while not future.done():
            with turn:
                if not future.done():
                    self._run(key, lane)
        return future.result()

    def leave(self, session: set | None, lane: Hashable) -> None:
        """The session is no longer due in `lane` (it has called there, or will not after all)."""
        with self._state:
            if session is not None and lane in session:
                session.discard(lane)
                self._due[lane] -= 1
            self._state.notify_all()

    def waiting(self) -> int:
        """How many items wait for a batch now."""
        with self._state:
            return len(self._pending)

    def _waiting(self, key: Hashable) -> list[tuple[Hashable, T, Future]]:
        return [p for p in self._pending if p[0] == key][:self.max_batch]

    def _run(self, key: Hashable, lane: Hashable) -> None:
        """Run the oldest `max_batch` waiting items of `key` as one batch, once no open session is due in `lane`
        (or `max_batch` wait, or `gather_s` has passed)."""
        with self._state:
            self._state.wait_for(lambda: self._due[lane] <= 0 or len(self._waiting(key)) >= self.max_batch,
                                 timeout=self.gather_s)
            batch = self._waiting(key)
            self._pending = [p for p in self._pending if all(p is not b for b in batch)]
        self.batch_sizes.append(len(batch))
        try:
            results = self.run_batch(key, [item for _, item, _ in batch])
        except Exception as err:  # noqa: BLE001 (each caller of the batch gets its error)
            for _, _, future in batch:
                future.set_exception(err)
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            future.set_result(result)
