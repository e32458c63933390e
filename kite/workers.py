"""A process-wide pool of parked worker greenlets for running incoming calls.

Starting a greenlet is not free: on CPython 3.11 each new greenlet maps (and on
exit unmaps) a fresh frame-stack chunk, which costs two syscalls and a few page
faults per call. Parked workers are reused instead, so a steady stream of calls
runs without creating greenlets. Concurrency limits stay with the caller (each
connection counts its own running calls); this pool only recycles greenlets.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeAlias

import gevent
from gevent.hub import Waiter, get_hub

log = logging.getLogger("kite.workers")

#: What a parked worker is woken with: the function and its one argument.
_Job: TypeAlias = tuple[Callable[[Any], Any], Any]

#: Idle workers kept parked per process. Enough to absorb bursts of dozens of
#: concurrent calls without spawning; few enough that idle memory stays small
#: (a parked greenlet holds its saved stack, a few KiB to tens of KiB).
MAX_IDLE_WORKERS = 128


class WorkerPool:
    """Runs ``fn(arg)`` in a greenlet, reusing parked ones. Use :func:`submit`."""

    def __init__(self, max_idle: int = MAX_IDLE_WORKERS):
        self.max_idle = max_idle
        self._idle: list[Waiter[_Job]] = []
        self._loop = get_hub().loop

    def submit(self, fn: Callable[[Any], Any], arg: Any) -> None:
        """Run ``fn(arg)`` soon in a worker greenlet; never blocks the caller."""
        if self._idle:
            waiter = self._idle.pop()
            self._loop.run_callback(waiter.switch, (fn, arg))
        else:
            gevent.spawn(self._work, fn, arg)

    def _work(self, fn: Callable[[Any], Any], arg: Any) -> None:
        while True:
            try:
                fn(arg)
            except Exception:
                log.exception("worker job %r failed", fn)
            if len(self._idle) >= self.max_idle:
                return
            waiter: Waiter[_Job] = Waiter()
            self._idle.append(waiter)
            fn, arg = waiter.get()


_pools: dict[int, WorkerPool] = {}


def submit(fn: Callable[[Any], Any], arg: Any) -> None:
    """Run ``fn(arg)`` in a pooled worker greenlet of the current thread's hub."""
    hub = get_hub()
    pool = _pools.get(id(hub))
    if pool is None:
        pool = _pools[id(hub)] = WorkerPool()
    pool.submit(fn, arg)
