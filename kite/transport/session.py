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


class SessionClosed(Exception):
    """Raised by :meth:`Session.send` once the session is closed."""


class Session(abc.ABC):
    """A bidirectional message pipe to one peer.

    Implementations are greenlet-safe: any greenlet may call :meth:`send`
    while one greenlet (the connection's read loop) sits in :meth:`recv`.
    """

    #: ``"host:port"`` of the peer, for logs (best effort).
    remote_addr: str = ""
    #: The query string of the request that opened the session (served sessions; ``""`` otherwise).
    query: str = ""

    @abc.abstractmethod
    def send(self, message: str) -> None:
        """Queue one message for the peer.

        Must not block for long. Messages queued within one turn of the event
        loop may be coalesced into a single transport frame. Raises
        :class:`SessionClosed` when the session is closed.
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
