"""Proxied WebSockets: messages copied both ways between a caller and a backend kite.

A :class:`Relay` joins the caller's WebSocket (taken over with
:meth:`~kite.transport.websocket.WebSocket.from_environ`) and the one the proxy dialed to
the backend (:func:`~kite.transport.wsclient.connect`). Two pumps copy every message as
it comes -- SockJS frames or raw dnode text alike, never decoded -- one per direction:

* **back-pressure, bounded memory**: a pump holds one message at a time and reads the next
  only once the other side's socket took it, so a slow reader stalls its sender through
  TCP flow control instead of queueing in the proxy (at most one message per direction,
  itself capped at ``max_message_size``);
* **prompt close**: when one side ends, the other is closed at once with the same close
  code, or, when the side just vanished (no close frame), with ``1014 backend went away``
  towards the caller and ``1001 caller went away`` towards the backend, so callers see a
  ``disconnect`` instead of a hang;
* **idle timeout**: :class:`Relays` closes relays that carried no message for
  ``idle_timeout`` seconds (SockJS sessions carry a heartbeat every 10 s, so only silent
  raw WebSockets and dead peers are cut).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Protocol

import gevent

from kite.transport.websocket import CLOSE_NORMAL, WebSocket, WebSocketClosed

if TYPE_CHECKING:
    from .registry import Backend

log = logging.getLogger("kite.proxy")

#: Close codes sent when a side ended without a usable close code of its own:
#: 1014 is RFC 6455's (IANA-registered) "bad gateway", 1001 "going away".
CLOSE_BAD_GATEWAY = 1014
CLOSE_GOING_AWAY = 1001
#: Codes that may not be sent in a close frame (they only report what happened).
_UNSENDABLE = frozenset((1005, 1006, 1015))
#: Seconds the second pump may take to finish once the first one ended: it waits for the
#: close handshake of its side, which the WebSocket bounds by its own close timeout (2 s).
PUMP_JOIN_TIMEOUT = 5.0
#: Default idle timeout, seconds: far above the 10 s SockJS heartbeat and the 25 s of
#: sockjs-node, so only connections that really carry nothing are cut.
IDLE_TIMEOUT = 600.0
#: The idle check runs this many times per idle timeout (a relay is closed between 1 and
#: 1.25 idle timeouts after its last message) -- one pass over all relays each time.
IDLE_CHECKS_PER_TIMEOUT = 4


def _relayed_close(ws: WebSocket, from_backend: bool) -> tuple[int, str]:
    """The close code and reason to pass on for a side ``ws`` that ended."""
    code = ws.close_code
    if code is None or code in _UNSENDABLE:
        if from_backend:
            return CLOSE_BAD_GATEWAY, "backend went away"
        return CLOSE_GOING_AWAY, "caller went away"
    return code, ws.close_reason


class Pipe(Protocol):
    """What :class:`Relays` runs and watches: a :class:`Relay`, or a tunnel
    (:class:`~kite.proxy.tunnels.Tunnel`)."""

    #: Messages carried so far, both directions (the idle check watches it move).
    messages: int
    backend: Backend

    def run(self) -> None:
        """Carry messages until both sides are closed (blocking)."""

    def close(self, code: int = CLOSE_NORMAL, reason: str = "", why: str = "") -> None:
        """Close both sides (idempotent)."""


class Relay:
    """One proxied WebSocket between ``caller`` and ``upstream`` (the backend ``backend``)."""

    def __init__(self, caller: WebSocket, upstream: WebSocket, backend: Backend, upstream_url: str):
        self.caller = caller
        self.upstream = upstream
        self.backend = backend
        self.upstream_url = upstream_url
        #: Messages copied so far, both directions (the idle check watches it move).
        self.messages = 0
        self.started = time.monotonic()
        self._ended_by = ""

    def __repr__(self) -> str:
        return f"<Relay {self.caller.remote_addr} -> kite {self.backend.kite_id}>"

    def run(self) -> None:
        """Copy messages both ways until both sides are closed (blocking)."""
        log.info(
            "websocket %s -> kite %s of %s (%s) opened",
            self.caller.remote_addr, self.backend.kite_id, self.backend.username, self.upstream_url,
        )
        down = gevent.spawn(self._pump, self.upstream, self.caller, True)
        try:
            self._pump(self.caller, self.upstream, False)
        finally:
            down.join(PUMP_JOIN_TIMEOUT)
            if not down.dead:
                down.kill(block=False)
            self.upstream.abort()
            self.caller.wait_closed()
            log.info(
                "websocket %s -> kite %s closed after %d messages in %.1f s: %s (caller %s, backend %s)",
                self.caller.remote_addr, self.backend.kite_id, self.messages, time.monotonic() - self.started,
                self._ended_by or "closed", self.caller.close_code, self.upstream.close_code,
            )

    def _pump(self, src: WebSocket, dst: WebSocket, from_backend: bool) -> None:
        """Copy ``src``'s messages to ``dst``; when either side ends, close the other."""
        try:
            while (texts := src.recv_texts()) is not None:
                self.messages += len(texts)
                if len(texts) == 1:
                    dst.send_text(texts[0])
                else:  # what one read brought, in one write
                    dst.send_texts(texts)
        except WebSocketClosed:  # dst went away while we were sending to it
            code, reason = _relayed_close(dst, not from_backend)
            self._ended(("caller" if from_backend else "backend") + f" went away ({code})")
            src.close(code, reason)
            return
        code, reason = _relayed_close(src, from_backend)
        self._ended(("backend" if from_backend else "caller") + f" closed ({src.close_code})")
        dst.close(code, reason)

    def _ended(self, why: str) -> None:
        if not self._ended_by:
            self._ended_by = why

    def close(self, code: int = CLOSE_NORMAL, reason: str = "", why: str = "") -> None:
        """Close both sides (idempotent): ``code``/``reason`` to the caller, 1001 to the backend."""
        self._ended(why or f"closed by the proxy ({code})")
        self.caller.close(code, reason)
        self.upstream.close(CLOSE_GOING_AWAY, reason)


class Relays:
    """Every live relay (or tunnel) of a proxy, and the idle check over them."""

    def __init__(self, idle_timeout: float = IDLE_TIMEOUT):
        #: Seconds without a message after which a relay is closed; 0 or less: never.
        self.idle_timeout = idle_timeout
        self._live: dict[Pipe, tuple[int, float]] = {}  # relay -> (messages seen, when they last moved)
        self._checker: gevent.Greenlet[[], None] | None = None

    def __len__(self) -> int:
        return len(self._live)

    def __iter__(self) -> Iterator[Pipe]:
        return iter(list(self._live))

    def run(self, relay: Pipe) -> None:
        """Run ``relay`` (blocking) while it counts as live."""
        self._live[relay] = (0, time.monotonic())
        relay.backend.relays.add(relay)
        self._start_checker()
        try:
            relay.run()
        finally:
            self._live.pop(relay, None)
            relay.backend.relays.discard(relay)

    def _start_checker(self) -> None:
        if self.idle_timeout > 0 and (self._checker is None or self._checker.dead):
            self._checker = gevent.spawn(self._check_idle_forever)

    def _check_idle_forever(self) -> None:
        while self._live and self.idle_timeout > 0:
            gevent.sleep(self.idle_timeout / IDLE_CHECKS_PER_TIMEOUT)
            self.check_idle()

    def check_idle(self) -> None:
        """Close the relays that carried no message for ``idle_timeout`` seconds."""
        now = time.monotonic()
        for relay, (seen, since) in list(self._live.items()):
            if relay.messages != seen:
                self._live[relay] = (relay.messages, now)
            elif now - since >= self.idle_timeout:
                log.info("%r idle for %.0f s", relay, now - since)
                relay.close(CLOSE_GOING_AWAY, "idle timeout", "idle timeout")

    def close(self, code: int = CLOSE_GOING_AWAY, reason: str = "proxy shutting down") -> None:
        """Close every relay (on shutdown)."""
        for relay in list(self._live):
            relay.close(code, reason)
        if self._checker is not None:
            self._checker.kill(block=False)
