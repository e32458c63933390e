"""End-of-turn flushing for sessions on one WebSocket, shared by the server and the client side.

Messages sent within one turn of the event loop are queued; the session's reader
writes them before it waits for more input (replies to the calls it has just
run), else a hub callback at the end of the turn frames them together; either
writes without waiting when the socket takes them. Only what would wait (a full
socket, TLS, a busy writer) is left to the session's writer greenlet, which
sends :attr:`_tail` (bytes a direct write left over) before anything else.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import gevent

from kite.wire.sockjs import batches

from .session import SendBacklogExceeded

if TYPE_CHECKING:
    from collections.abc import Callable

    from gevent.event import Event

    from .websocket import WebSocket


class HubFlush:
    """Mixin for a session with ``_pending``, ``_closed``, ``_wakeup``, ``_ws`` and ``_sockjs``.

    The session's ``send`` calls :meth:`_queue`; its writer loop sets
    :attr:`_writer_idle` while parked and sends :attr:`_tail` first.
    """

    _pending: list[str]
    #: Characters in :attr:`_pending` (kept by whoever changes it).
    _pending_chars: int
    max_backlog: int
    _closed: bool
    _wakeup: Event
    _ws: WebSocket
    #: SockJS-framed (else raw: one WebSocket message per message).
    _sockjs: bool
    #: The text of one SockJS frame carrying a batch: ``a[...]`` from a server, ``[...]`` from a client.
    _sockjs_payload: Callable[[list[str]], str]

    def _init_flush(self) -> None:
        self._writer_idle = False  # parked with nothing to write: the hub may write directly
        self._flush_scheduled = False
        self._tail = b""
        self._pending_chars = 0
        self._loop = gevent.get_hub().loop
        self._ws.before_read = self._flush_before_read

    def backlog(self) -> int:
        """Characters queued and not yet written: messages, and bytes a direct write left over."""
        return self._pending_chars + len(self._tail)

    def _frame(self, messages: list[str]) -> bytes:
        """The bytes that carry ``messages``: SockJS frames of at most :data:`~kite.wire.sockjs.BATCH_LIMIT`
        characters each (normally one), or raw, one WebSocket frame per message."""
        if self._sockjs:
            return b"".join(self._ws.text_frame(self._sockjs_payload(batch)) for batch in batches(messages))
        return b"".join(map(self._ws.text_frame, messages))

    def _take_pending(self) -> list[str]:
        """In the writer: everything queued, the queue emptied."""
        messages, self._pending = self._pending, []
        self._pending_chars = 0
        return messages

    def _overflow(self) -> None:
        """The queue is over :attr:`max_backlog`: the peer is not reading. Close the session and drop
        the connection at once (a closing handshake would queue behind what it never read)."""
        raise NotImplementedError

    def _send_tail(self) -> bool:
        """In the writer: send what a direct write left over; ``False`` if there was nothing."""
        if not self._tail:
            return False
        tail, self._tail = self._tail, b""
        self._ws.send_frames(tail)
        return True

    def _queue(self, message: str) -> None:
        if self._pending_chars + len(message) + len(self._tail) > self.max_backlog:
            self._overflow()
            raise SendBacklogExceeded(f"session to {self._ws.remote_addr}: {self.max_backlog} characters queued")
        self._pending.append(message)
        self._pending_chars += len(message)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self._loop.run_callback(self._flush)

    def _flush_before_read(self) -> None:
        """In the reader, before it waits for input: write what it queued meanwhile (replies to
        calls it ran) now, rather than after it has gone back to waiting. A scheduled hub
        flush stays scheduled (it finds nothing, or what other greenlets queued since)."""
        if self._pending:
            self._write_pending()

    def _flush(self) -> None:
        """In the hub, at the end of the turn: write the turn's messages, or leave them to the writer."""
        self._flush_scheduled = False
        if self._pending:
            self._write_pending()

    def _write_pending(self) -> None:
        """Write the queued messages without waiting, or leave them (and what is left) to the writer."""
        if self._tail or not self._writer_idle or self._closed:
            self._wakeup.set()  # the writer has something to send first, or is busy: it takes these too
            return
        messages, self._pending = self._pending, []
        chars, self._pending_chars = self._pending_chars, 0
        tail = self._ws.send_nowait(self._frame(messages))
        if tail is None:  # could not write now: the writer will
            self._pending[:0] = messages
            self._pending_chars += chars
            self._wakeup.set()
        elif tail:
            self._tail = tail
            self._wakeup.set()
