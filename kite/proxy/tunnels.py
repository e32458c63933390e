"""A tunnel: one caller's session joined to the WebSocket its kite dialed back (PROTOCOL.md §8.5).

Both ends are SockJS sessions served by the tunnel proxy -- the caller's on ``/proxy``
(any transport: SockJS or raw WebSocket, XHR polling or streaming), the kite's on
``/tunnel`` (a SockJS WebSocket) -- so a :class:`Tunnel` copies *messages* (dnode JSON
texts, never decoded) between two :class:`~kite.transport.session.Session` objects:

* **back-pressure, bounded memory**: a pump sends one message, and before it reads the
  next it waits while the other side still has more than :data:`MAX_BACKLOG` characters
  queued for its peer; a slow reader thus stalls its sender (through TCP for a WebSocket)
  instead of growing the proxy's memory;
* **prompt close**: when one side ends, the other is closed at once (``c[3000,…]`` naming
  who went away), so callers see a ``disconnect`` instead of a hang;
* it counts as one of the kite's tunnels from the moment it is asked for until it ends
  (the per-kite limit of :class:`~kite.proxy.tunnel.TunnelProxy`), and the idle check of
  :class:`~kite.proxy.relay.Relays` watches its message count.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event

from kite.transport.session import SessionClosed

if TYPE_CHECKING:
    from kite.transport.session import Session

    from .registry import Backend

log = logging.getLogger("kite.proxy")

#: Characters a pump lets wait for one side's peer before it stops reading the other side.
MAX_BACKLOG = 1024 * 1024
#: Seconds between two looks at a full side's backlog while a pump waits for it to drain.
DRAIN_POLL = 0.005
#: The SockJS close frame each side gets when the other one ended first.
KITE_WENT_AWAY = (3000, "The kite went away")
CALLER_WENT_AWAY = (3000, "The caller went away")
_WENT_AWAY = {"kite": KITE_WENT_AWAY, "caller": CALLER_WENT_AWAY}
#: Seconds the second pump may take to finish once the first one ended.
PUMP_JOIN_TIMEOUT = 5.0


class Tunnel:
    """Tunnel number ``seq`` from the caller's ``caller`` session to the kite ``backend``.

    :meth:`attach` gives it the kite's session (``started`` is then set); :meth:`run`
    copies messages both ways until both sides are closed; ``done`` is set afterwards.
    """

    def __init__(self, seq: int, caller: Session, backend: Backend, max_backlog: int = MAX_BACKLOG):
        self.seq = seq
        self.caller = caller
        self.backend = backend
        self.max_backlog = max_backlog
        #: The kite's session, once it dialed back.
        self.upstream: Session | None = None
        #: Messages copied so far, both directions (the idle check watches it move).
        self.messages = 0
        self.started = Event()
        self.done = Event()
        self.created = time.monotonic()
        self._ended_by = ""

    def __repr__(self) -> str:
        return f"<Tunnel #{self.seq} {self.caller.remote_addr} -> kite {self.backend.kite_id}>"

    def attach(self, upstream: Session) -> bool:
        """Join the kite's session; ``False`` (and nothing changes) if the tunnel has one or is done."""
        if self.upstream is not None or self.done.is_set():
            return False
        self.upstream = upstream
        self.started.set()
        return True

    def run(self) -> None:
        """Copy messages both ways until both sides are closed (blocking); needs :meth:`attach` first."""
        upstream = self.upstream
        assert upstream is not None, "run() before attach()"
        log.info("tunnel #%d %s -> kite %s of %s opened", self.seq, self.caller.remote_addr,
                 self.backend.kite_id, self.backend.username)
        started = time.monotonic()
        down = gevent.spawn(self._pump, upstream, self.caller, "kite", "caller")
        try:
            self._pump(self.caller, upstream, "caller", "kite")
        finally:
            down.join(PUMP_JOIN_TIMEOUT)
            if not down.dead:
                down.kill(block=False)
            self.close(*KITE_WENT_AWAY)
            log.info("tunnel #%d %s -> kite %s closed after %d messages in %.1f s: %s", self.seq,
                     self.caller.remote_addr, self.backend.kite_id, self.messages, time.monotonic() - started,
                     self._ended_by or "closed")

    def _pump(self, src: Session, dst: Session, src_name: str, dst_name: str) -> None:
        """Copy ``src``'s messages to ``dst``; when either side ends, close the other."""
        try:
            while (message := src.recv()) is not None:
                self.messages += 1
                dst.send(message)
                while dst.backlog() > self.max_backlog and not dst.closed:
                    gevent.sleep(DRAIN_POLL)
        except SessionClosed:
            self._ended(f"the {dst_name} went away")
            src.close(*_WENT_AWAY[dst_name])
            return
        self._ended(f"the {src_name} closed")
        dst.close(*_WENT_AWAY[src_name])

    def _ended(self, why: str) -> None:
        if not self._ended_by:
            self._ended_by = why

    def close(self, code: int = KITE_WENT_AWAY[0], reason: str = KITE_WENT_AWAY[1], why: str = "") -> None:
        """Close both sides (idempotent): ``code``/``reason`` to the caller, "the caller went away" to the kite."""
        self._ended(why or f"closed by the proxy ({reason})")
        self.caller.close(code, reason)
        if self.upstream is not None:
            self.upstream.close(*CALLER_WENT_AWAY)
        self.done.set()
