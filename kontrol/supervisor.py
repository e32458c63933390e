"""``kontrol --workers N``: N Kontrol processes serving one port, restarted when one dies.

Each worker is a whole Kontrol on the shared storage (etcd, etcd2, PostgreSQL) -- the same
thing as N Kontrols on one store, which the storage backends and the registry already
handle: a kite registered through one worker is found and watched through the others
(the storage's change feed), an HTTP heartbeat reaching a worker that did not register the
kite adopts it from the storage (:meth:`kontrol.registry.Registry.seen`), and a worker that
dies loses no kite (its HTTP kites' heartbeats land on the others; its websocket kites
reconnect and register again).

Every worker binds the port with ``SO_REUSEPORT``, and the kernel spreads new connections
over their sockets. We chose that over one listening socket inherited by pre-forked
workers because with a shared socket every idle gevent worker wakes for each connection and
the first to call ``accept`` wins, so the busiest worker (still inside its event loop)
tends to lose and the load stays uneven; with ``SO_REUSEPORT`` each worker accepts only
from its own queue and the split is even. The price: connections still queued on a worker
that dies are reset (callers reconnect, as they do after any restart).

The supervisor only forks, restarts and forwards signals: SIGTERM or SIGINT stops the
workers (each drains: :meth:`kontrol.Kontrol.shutdown`) and then itself; a second one makes
them stop at once; a worker that exits otherwise is started again after :data:`RESTART_DELAY`.
The workers share one kite id and each writes Kontrol's own entry before it accepts
connections, so whichever worker a caller reaches, Kontrol is listed. A worker deletes that
entry as it stops only when the supervisor stops them all (:meth:`Supervisor.stopping_all`,
a flag in memory shared with the workers): a worker stopped on its own leaves it to its siblings.
"""

from __future__ import annotations

import logging
import mmap
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent

log = logging.getLogger("kontrol.supervisor")

#: Seconds before a worker that died is started again (and between restarts of a crashing one).
RESTART_DELAY = 1.0
#: Seconds the workers get to stop after SIGTERM before they are killed (by default: their drain
#: timeout, ``kite.config.DEFAULT_DRAIN_TIMEOUT``, plus a few seconds to close).
STOP_TIMEOUT = 15.0
#: The signals that stop the workers (SIGTERM: a drain each; the same again: at once).
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: Seconds between two looks at the workers.
POLL_INTERVAL = 0.2


class Supervisor:
    """Runs ``count`` workers, each ``run_worker(index)`` in a forked process (it should not return
    until the worker stops; its return value is the worker's exit status)."""

    def __init__(self, count: int, run_worker: Callable[[int], int], stop_timeout: float = STOP_TIMEOUT):
        self.count = count
        self._run_worker = run_worker
        self.stop_timeout = stop_timeout
        self.workers: dict[int, int] = {}  # pid -> index
        self._stopping = False
        self._signal_handles: list[Any] = []
        # One byte shared with the forked workers (an anonymous shared mapping): 1 once the
        # supervisor stops them all.
        self._all_stopping = mmap.mmap(-1, 1)

    def stopping_all(self) -> bool:
        """True (in the supervisor and in every worker) once the supervisor stops all the workers."""
        return self._all_stopping[0] == 1

    def run(self) -> int:
        """Start the workers and keep them running until SIGTERM/SIGINT; 0 once they all stopped."""
        self._signal_handles = [gevent.signal_handler(sig, self.stop) for sig in STOP_SIGNALS]
        for index in range(self.count):
            self._start(index)
        log.info("kontrol: %d workers serving (pids %s)", self.count, ", ".join(map(str, self.workers)))
        while self.workers:
            for pid, status in self._reap():
                index = self.workers.pop(pid)
                if self._stopping:
                    continue
                log.error("worker %d (pid %d) exited with status %d; restarting it in %g s", index, pid,
                          os.waitstatus_to_exitcode(status), RESTART_DELAY)
                gevent.sleep(RESTART_DELAY)
                if not self._stopping:
                    self._start(index)
            gevent.sleep(POLL_INTERVAL)
        return 0

    def _start(self, index: int) -> None:
        # The stop signals are held back across the fork: one arriving between the fork and the
        # child's SIG_DFL below would run the supervisor's inherited handler in the child and be lost
        # (the child then served on, unstopped). Held, it is delivered once the child's default is in.
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            pid = os.fork()
        except BaseException:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            raise
        if pid != 0:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if pid == 0:  # the worker: the supervisor's state is not its own
            self.workers.clear()
            self._stopping = True
            # Not the supervisor's handlers here: until the worker installs its own (a drain), a stop
            # signal ends it at once -- it is not serving yet, so there is nothing to drain.
            for handle in self._signal_handles:
                handle.cancel()
            for sig in STOP_SIGNALS:
                signal.signal(sig, signal.SIG_DFL)
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
            status = 1
            try:
                status = self._run_worker(index)
            except BaseException:
                log.exception("worker %d failed", index)
            finally:
                os._exit(status)
        self.workers[pid] = index

    def _reap(self) -> list[tuple[int, int]]:
        """The workers that exited since the last look: ``(pid, wait status)``."""
        done = []
        for pid in list(self.workers):
            try:
                found, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                found, status = pid, 0
            if found:
                done.append((pid, status))
        return done

    def stop(self) -> None:
        """Stop every worker: SIGTERM (each drains), SIGKILL after :attr:`stop_timeout`; called again
        (a second signal), SIGTERM again: each worker then stops at once."""
        if self._stopping:
            log.warning("kontrol: stopping %d workers at once", len(self.workers))
            self._signal_all(signal.SIGTERM)
            return
        self._stopping = True
        self._all_stopping[0] = 1
        log.info("kontrol: stopping %d workers", len(self.workers))
        self._signal_all(signal.SIGTERM)
        gevent.spawn(self._kill_stragglers)

    def _kill_stragglers(self) -> None:
        deadline = time.monotonic() + self.stop_timeout
        while self.workers and time.monotonic() < deadline:
            gevent.sleep(POLL_INTERVAL)
        if self.workers:
            log.warning("kontrol: workers %s did not stop within %g s; killing them", list(self.workers),
                        self.stop_timeout)
            self._signal_all(signal.SIGKILL)

    def _signal_all(self, sig: int) -> None:
        for pid in list(self.workers):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
