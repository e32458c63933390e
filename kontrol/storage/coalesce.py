"""Group commit: the calls made while one is under way, carried together by the next round trip.

Under load many greenlets call the storage at once with small requests of the same kind (an
upsert, a refresh, a lookup by id), and each round trip costs far more CPU, on both ends, than
the work it carries. A :class:`Coalescer` sends the first call at once and, while it is under
way, queues the others; the next round trip carries every queued call (up to a size limit, never
two calls that touch the same key), and each caller gets its own result.

When a combined round trip fails with an error that may be one caller's fault (``alone(error)``,
say a constraint one record violates), each of its calls is retried alone, so one bad call never
fails the others; any other error (the server unreachable) reaches every caller of the batch.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import gevent
from gevent.event import AsyncResult

I = TypeVar("I")  # noqa: E741 -- an item (one call's request)
R = TypeVar("R")  # one call's result

#: ``run(items)``: one round trip for all ``items``; their results, in the same order.
Run = Callable[[Sequence[I]], Sequence[R]]


@dataclass
class _Call(Generic[I, R]):
    item: I
    keys: frozenset[Hashable]
    size: int
    result: AsyncResult[R] = field(default_factory=AsyncResult)


def _never(error: Exception) -> bool:
    return False


class Coalescer(Generic[I, R]):
    """Runs calls through ``run``, combining those that wait together (see the module docstring).

    ``keys(item)``: what a call touches; a batch never holds two calls sharing a key.
    ``size(item)`` and ``max_size``: a batch holds at most ``max_size`` (the first call of a
    batch always goes, whatever its size). ``alone(error)``: whether a failed batch of several
    calls is retried one call at a time. ``senders``: how many batches may be under way at once.
    """

    def __init__(
        self,
        run: Run[I, R],
        *,
        max_size: int = 100,
        keys: Callable[[I], Iterable[Hashable]] = lambda item: (),
        size: Callable[[I], int] = lambda item: 1,
        alone: Callable[[Exception], bool] = _never,
        senders: int = 1,
    ) -> None:
        if max_size < 1 or senders < 1:
            raise ValueError("max_size and senders must be at least 1")
        self._run = run
        self.max_size = max_size
        self._keys = keys
        self._size = size
        self._alone = alone
        self._senders = senders
        self._queue: list[_Call[I, R]] = []
        self._active = 0
        #: Round trips made and calls carried (for tests and benchmarks).
        self.round_trips = 0
        self.calls = 0

    def __call__(self, item: I) -> R:
        """Run one call (blocking) and return its result, or raise its error."""
        call: _Call[I, R] = _Call(item, frozenset(self._keys(item)), self._size(item))
        self._queue.append(call)
        if self._active < self._senders:
            self._active += 1
            gevent.spawn(self._drain)
        return call.result.get()

    def _drain(self) -> None:
        try:
            while self._queue:
                self._send(self._take())
        finally:
            self._active -= 1

    def _take(self) -> list[_Call[I, R]]:
        """The next batch: queued calls in order, no key twice, at most ``max_size`` in all."""
        batch: list[_Call[I, R]] = []
        keys: set[Hashable] = set()
        size = 0
        for call in self._queue:
            if batch and (size + call.size > self.max_size or not keys.isdisjoint(call.keys)):
                continue
            batch.append(call)
            keys |= call.keys
            size += call.size
        taken = set(map(id, batch))
        self._queue = [call for call in self._queue if id(call) not in taken]
        return batch

    def _send(self, batch: list[_Call[I, R]]) -> None:
        self.round_trips += 1
        self.calls += len(batch)
        try:
            results = self._run([call.item for call in batch])
        except Exception as error:
            if len(batch) > 1 and self._alone(error):
                for call in batch:  # find out which call it was: each one alone
                    self._send([call])
                return
            for call in batch:
                call.result.set_exception(error)
            return
        except BaseException as error:  # killed: every caller learns it, and the sender goes
            for call in batch:
                call.result.set_exception(error)
            raise
        if len(results) != len(batch):
            error = RuntimeError(f"a batch of {len(batch)} calls gave {len(results)} results")
            for call in batch:
                call.result.set_exception(error)
            return
        for call, result in zip(batch, results, strict=True):
            call.result.set(result)
