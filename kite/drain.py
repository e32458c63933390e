"""Graceful drain: :meth:`kite.Kite.shutdown`, and the stop signals of :meth:`kite.Kite.run`.

:class:`Drain` stops a kite in this order, so that no caller loses a call it made in time and no
caller is sent to a kite that is going away:

1. **deregister**: the Kontrol connection is closed (Kontrol deletes a websocket-registered entry
   the moment that connection ends, PROTOCOL.md §7.3) and the HTTP heartbeats stop. The HTTP
   protocol has no "unregister" (§7.7: only ``/register`` and ``/heartbeat``), so an
   HTTP-registered entry stays until Kontrol misses its heartbeats (interval + delay, 30 s with
   Go's constants);
2. **stop accepting**: the listening socket is closed (connections already accepted go on), and
   every new call -- on any session, old or new -- is answered at once with a ``genericError``
   :data:`SHUTTING_DOWN_MESSAGE` instead of being run; ``/readyz`` says "not ready";
3. **wait** until no session has a call running or queued, nor a reply still queued for its peer
   (:meth:`~kite.connection.Connection.stats`), or the timeout passes;
4. **close** every session with a proper close frame (SockJS ``c[3000,"Go away!"]``, raw
   websocket close 3000 "Go away!", as Go kites do), so that every caller sees ``disconnect``
   at once rather than a hang, then stop the server: :meth:`kite.Kite.close`.

:class:`StopSignals` is what :meth:`kite.Kite.run` (and ``kontrol``) install: the first SIGTERM or
SIGINT drains, the second stops at once.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event

from .calls import refuse_call
from .errors import GenericError

if TYPE_CHECKING:
    from .client import Client
    from .connection import Connection
    from .kite import Kite

log = logging.getLogger("kite.drain")

#: What a call that arrives while the kite drains is answered (a ``genericError``).
SHUTTING_DOWN_MESSAGE = "kite is shutting down"
#: Seconds between two looks at the calls in flight while draining: short next to any call worth
#: waiting for, and a few hundred cheap looks over a whole drain.
POLL_INTERVAL = 0.02
#: Seconds at most step 1 waits for the Kontrol connection's closing handshake: Kontrol answers the
#: close frame once it has read it, and deletes the entry as the connection ends, so the entry is
#: gone (or going) before any caller's session is closed.
DEREGISTER_TIMEOUT = 1.0
#: The signals :class:`StopSignals` handles.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """The graceful shutdown of one kite (``kite.drain``); see the module docstring."""

    def __init__(self, kite: Kite):
        self.kite = kite
        #: ``time.monotonic()`` when the drain began, ``None`` before.
        self.started: float | None = None
        #: Calls running or queued when the drain began (each then finished or was cut off).
        self.in_flight_at_start = 0
        #: Calls answered :data:`SHUTTING_DOWN_MESSAGE` so far.
        self.refused = 0
        #: Seconds the drain took (``None`` until it ended).
        self.seconds: float | None = None
        #: Whether every call finished within the timeout (valid once :attr:`done` is set).
        self.drained = False
        #: Set once the drain has ended and the kite is closed.
        self.done = Event()
        self._before_close: list[Callable[[], Any]] = []
        self._startup_done = Event()  # clear while :meth:`kite.Kite.run` binds and runs its on_bound hooks
        self._startup_done.set()

    def startup_begins(self) -> None:
        """:meth:`kite.Kite.run` starts binding: a shutdown now waits for it (:meth:`wait_startup`)."""
        self._startup_done.clear()

    def startup_ends(self) -> None:
        """:meth:`kite.Kite.run` serves now (or failed to start)."""
        self._startup_done.set()

    def wait_startup(self, timeout: float) -> bool:
        """Wait (at most ``timeout``) for a start under way to end, so that a stop signal that comes
        while the kite binds and registers (its ``on_bound`` hooks) stops what they started."""
        return self._startup_done.wait(max(0.0, timeout))

    @property
    def draining(self) -> bool:
        """True from the start of :meth:`shutdown` until the kite is closed."""
        return self.started is not None and not self.done.is_set()

    def before_close(self, fn: Callable[[], Any]) -> None:
        """Run ``fn()`` once the calls have drained (or the timeout passed), just before the sessions
        are closed (Kontrol: its kites' disconnects from then on keep their entries)."""
        self._before_close.append(fn)

    def shutdown(self, timeout: float) -> bool:
        """Drain and close the kite (blocking); ``True`` if every call finished within ``timeout``.

        Idempotent: a second call waits for the first one's end and returns its answer. A
        :meth:`kite.Kite.close` meanwhile cuts the drain short (``False``).
        """
        if self.started is not None:
            self.done.wait()
            return self.drained
        kite = self.kite
        if kite.server_close_notify().is_set():
            return False  # closed already: nothing to drain
        self.started = time.monotonic()
        deadline = self.started + max(0.0, timeout)
        try:
            self.wait_startup(deadline - time.monotonic())
            self._deregister(deadline)
            self._stop_accepting()
            self.in_flight_at_start = self._in_flight()
            log.info("%s shutting down: %d calls in flight, waiting up to %.1f s", kite.name,
                     self.in_flight_at_start, timeout)
            self.drained = self._wait_idle(deadline)
            for fn in self._before_close:
                try:
                    fn()
                except Exception:
                    log.exception("before-close hook %r failed", fn)
            if not self.drained and not kite.server_close_notify().is_set():
                log.warning("%s: %d calls still in flight after %.1f s: closing their sessions", kite.name,
                            self._in_flight(), timeout)
        finally:
            self.seconds = time.monotonic() - self.started
            if not kite.server_close_notify().is_set():
                kite.close()
            log.info("%s stopped after %.3f s of drain (%d calls in flight at the start, %d refused)%s",
                     kite.name, self.seconds, self.in_flight_at_start, self.refused,
                     "" if self.drained else "; not drained")
            self.done.set()
        return self.drained

    # -- the steps ---------------------------------------------------------------------

    def _deregister(self, deadline: float) -> None:
        """Step 1: close the Kontrol connection (and its HTTP heartbeats), then wait for its end."""
        kontrol_client = self.kite.kontrol.client
        conn = kontrol_client._conn if kontrol_client is not None else None
        self.kite.kontrol.close()
        if conn is not None and not conn.closed:
            conn.wait_ended(max(0.0, min(DEREGISTER_TIMEOUT, deadline - time.monotonic())))

    def _stop_accepting(self) -> None:
        """Step 2: close the listening socket (not under gunicorn, whose worker closes its own) and
        refuse new calls on every connection, present and future (:meth:`refuses_calls`)."""
        server = self.kite._server
        if server is not None:
            server.close()
        for client in self._clients():
            conn = client._conn
            if conn is not None:
                conn.refuse_calls(self.refuse)

    def refuse(self, conn: Connection, method: str, arguments: list[Any]) -> None:
        """Answer a new call with :data:`SHUTTING_DOWN_MESSAGE` (a :data:`~kite.connection.CallHandler`)."""
        self.refused += 1
        refuse_call(arguments, GenericError(SHUTTING_DOWN_MESSAGE))

    def refuses_calls(self) -> bool:
        """True while new connections must refuse calls from their start."""
        return self.draining

    def _wait_idle(self, deadline: float) -> bool:
        """Step 3: until nothing is in flight (``True``), the deadline, or a :meth:`Kite.close`."""
        closed = self.kite.server_close_notify()
        while not closed.is_set():
            if not self._in_flight() and not self._backlog():
                return True
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            closed.wait(min(POLL_INTERVAL, left))
        return False

    def _clients(self) -> Iterator[Client]:
        """Every connection whose peer may call this kite: the served ones and the dialed ones."""
        kite = self.kite
        yield from list(kite._clients)
        yield from list(kite._dialed_clients)

    def _in_flight(self) -> int:
        total = 0
        for client in self._clients():
            conn = client._conn
            if conn is not None and not conn.closed:
                counts = conn.stats()
                total += counts["running_calls"] + counts["queued_calls"]
        return total

    def _backlog(self) -> int:
        """Characters of replies still queued for served peers (an XHR peer takes them at its next poll)."""
        total = 0
        for client in list(self.kite._clients):
            conn = client._conn
            if conn is not None and not conn.closed:
                total += conn.session.backlog()
        return total


class StopSignals:
    """SIGTERM/SIGINT handlers: the first runs ``graceful()`` (a drain), a second ``immediate()``.

    Both run in greenlets of their own, so either may block.
    """

    def __init__(self, graceful: Callable[[], Any], immediate: Callable[[], Any], name: str = "kite"):
        self.graceful = graceful
        self.immediate = immediate
        self.name = name
        #: Stop signals received so far.
        self.received = 0
        self._handles: list[Any] = []
        self._previous: dict[int, Any] = {}  # signal -> its handler before install()

    def install(self, signals: tuple[int, ...] = STOP_SIGNALS) -> StopSignals:
        """Handle ``signals`` from now on (gevent signal watchers; undone by :meth:`uninstall`)."""
        for sig in signals:
            self._previous[sig] = signal.getsignal(sig)
            self._handles.append(gevent.signal_handler(sig, self.on_signal, sig))
        return self

    def uninstall(self) -> None:
        """Stop handling the signals, and give them back their handlers from before :meth:`install`
        (the event loop leaves a signal it no longer watches at the OS default: SIGINT would kill)."""
        for handle in self._handles:
            handle.cancel()
        self._handles.clear()
        for sig, previous in self._previous.items():
            if previous is not None:
                signal.signal(sig, previous)
        self._previous.clear()

    def on_signal(self, sig: int) -> None:
        """One stop signal: drain on the first, stop at once on the next."""
        self.received += 1
        name = signal.Signals(sig).name
        if self.received == 1:
            log.info("%s: %s: draining (send it again to stop at once)", self.name, name)
            gevent.spawn(self.graceful)
        else:
            log.warning("%s: %s again: stopping at once", self.name, name)
            gevent.spawn(self.immediate)


def in_main_greenlet() -> bool:
    """True in the main thread's main greenlet: the code a program blocks in while it serves."""
    import threading

    import greenlet

    return threading.current_thread() is threading.main_thread() and greenlet.getcurrent().parent is None
