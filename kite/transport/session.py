"""The one seam between transports and the kite runtime.

Every way bytes move between two kites -- SockJS over WebSocket, raw WebSocket,
SockJS XHR polling or streaming, on the serving or the dialing side -- is a
:class:`Session`. The connection logic above it never knows which one it has.

A session carries *messages*: each one is a complete dnode JSON document as a
``str``. Framing (``a[...]``, ``o``, ``h``, ``c[...]``, WebSocket frames) is the
transport's business.
"""

from __future__ import annotations

import abc

#: Default cap on what a session may hold queued for its peer, in characters: eight of the
#: largest messages a peer may send us (16 MiB, :data:`kite.transport.websocket.MAX_MESSAGE_SIZE`),
#: so a burst of big replies to a slow reader fits (64 answers of 1 MiB through a proxy that
#: back-pressures, tests/proxy/test_load.py), while a peer that has stopped reading (hung, or
#: flooding us with calls it never reads the answers of) cannot grow it without bound. A peer
#: that stopped altogether is dropped sooner, by the dead-peer timeout.
MAX_SEND_BACKLOG = 128 * 1024 * 1024
#: Close code and reason of a session whose send queue went over its cap (an application
#: code, in the SockJS/WebSocket range 4000-4999 left to applications).
BACKLOG_CLOSE_CODE = 4009
BACKLOG_CLOSE_REASON = "send queue over its limit: the peer is not reading"


class SessionClosed(Exception):
    """Raised by :meth:`Session.send` once the session is closed."""


class SendBacklogExceeded(SessionClosed):
    """Raised by :meth:`Session.send` when the message would take the queue over
    :attr:`Session.max_backlog`; the session has been closed."""


class Session(abc.ABC):
    """A bidirectional message pipe to one peer.

    Implementations are greenlet-safe: any greenlet may call :meth:`send`
    while one greenlet (the connection's read loop) sits in :meth:`recv`.
    """

    #: ``"host:port"`` of the peer, for logs (best effort).
    remote_addr: str = ""
    #: The query string of the request that opened the session (served sessions; ``""`` otherwise).
    query: str = ""
    #: Characters :meth:`send` may hold queued before the session is closed with
    #: :data:`BACKLOG_CLOSE_CODE` (:class:`SendBacklogExceeded`): memory per peer stays bounded.
    max_backlog: int = MAX_SEND_BACKLOG

    @abc.abstractmethod
    def send(self, message: str) -> None:
        """Queue one message for the peer.

        Must not block for long. Messages queued within one turn of the event
        loop may be coalesced into a single transport frame. Raises
        :class:`SessionClosed` when the session is closed, and closes it (raising
        :class:`SendBacklogExceeded`) when the queue would exceed :attr:`max_backlog`.
        """

    @abc.abstractmethod
    def recv(self) -> str | None:
        """Block until the next message from the peer; ``None`` once the session has ended."""

    @abc.abstractmethod
    def close(self, code: int = 3000, reason: str = "Go away!") -> None:
        """End the session (idempotent). A pending :meth:`recv` returns ``None``."""

    @property
    @abc.abstractmethod
    def closed(self) -> bool:
        """True once the session has ended, from either side."""

    def backlog(self) -> int:
        """Characters of messages queued by :meth:`send` and not yet handed to the transport:
        what a relay checks before it reads more for this peer (back-pressure)."""
        return 0
