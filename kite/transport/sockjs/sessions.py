"""The sessions a SockJS server serves: one WebSocket (SockJS-framed or raw), or XHR.

Every session coalesces its sends: ``send()`` only queues, and what is queued
together leaves as one ``a[...]`` frame. A WebSocket session writes its queue
before its reader waits for more input (so replies to the calls it just read go
out together) or, for messages other greenlets queued, at the end of the loop
turn from the hub (:mod:`kite.transport.flush`); an XHR session hands its queue to
the pending poll.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import Event
from gevent.queue import Queue

from kite.errors import RemoteProtocolError
from kite.transport import websocket
from kite.transport.flush import HubFlush
from kite.transport.session import BACKLOG_CLOSE_CODE, BACKLOG_CLOSE_REASON, SendBacklogExceeded, Session, SessionClosed
from kite.wire.sockjs import (
    ANOTHER_CONNECTION,
    GO_AWAY,
    HEARTBEAT,
    OPEN,
    batches,
    decode_client_payload,
    encode_close,
    encode_messages,
    first_batch,
)

if TYPE_CHECKING:
    from .server import SockJSServer

log = logging.getLogger("kite.sockjs")


class ServerSession(Session):
    """Outgoing side shared by all served sessions: a coalescing queue."""

    def __init__(self, session_id: str, remote_addr: str):
        self.id = session_id
        self.remote_addr = remote_addr
        self.close_code: int | None = None
        self.close_reason = ""
        self._pending: list[str] = []
        self._pending_chars = 0  # characters in _pending
        self._wakeup = Event()  # set when there is something for the writer/receiver
        self._closed = False
        self._close_frame: str | None = None

    def send(self, message: str) -> None:
        if self._closed:
            raise SessionClosed(f"session {self.id} to {self.remote_addr} is closed")
        if not isinstance(message, str):
            raise TypeError(f"message must be str, not {type(message).__name__}")
        if self._pending_chars + len(message) > self.max_backlog:
            self._overflow()
            raise SendBacklogExceeded(f"session {self.id} to {self.remote_addr}: {self.max_backlog} characters queued")
        self._pending.append(message)
        self._pending_chars += len(message)
        if len(self._pending) == 1:
            self._wakeup.set()  # the waiter runs on a later loop turn: later sends join this frame

    def close(self, code: int = GO_AWAY[0], reason: str = GO_AWAY[1]) -> None:
        if self._closed:
            return
        self._closed = True
        self.close_code, self.close_reason = code, reason
        self._close_frame = encode_close(code, reason)
        self._on_close()
        self._wakeup.set()

    def _on_close(self) -> None:
        """Subclass hook, called once when the session closes."""

    def _overflow(self) -> None:
        """The send queue is over its cap: the peer is not reading. Close with :data:`BACKLOG_CLOSE_CODE`."""
        log.warning("closing session %s to %s: %s (%d characters)", self.id, self.remote_addr,
                    BACKLOG_CLOSE_REASON, self._pending_chars)
        self._pending, self._pending_chars = [], 0
        self.close(BACKLOG_CLOSE_CODE, BACKLOG_CLOSE_REASON)

    @property
    def closed(self) -> bool:
        return self._closed

    def backlog(self) -> int:
        return self._pending_chars

    def _take_frame(self) -> str | None:
        """An ``a[...]`` frame of the queued messages (at most a batch of them), or ``None``."""
        if not self._pending:
            return None
        n = first_batch(self._pending)
        messages, self._pending = self._pending[:n], self._pending[n:]
        self._pending_chars -= sum(map(len, messages))
        return encode_messages(messages)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.remote_addr} closed={self._closed}>"


class WebSocketSession(HubFlush, ServerSession):
    """A session on one WebSocket, SockJS-framed or raw (one text message per message).

    ``recv`` reads the socket in the caller's greenlet and, before it waits for
    more, writes what is queued. Sends queued in one loop turn are otherwise
    flushed together at the end of the turn by a hub callback that writes without
    waiting; whatever would have to wait (a full socket, TLS, the ``o``/``h``
    frames, the close) goes to a writer greenlet.
    """

    _sockjs_payload = staticmethod(encode_messages)

    def __init__(
        self,
        ws: websocket.WebSocket,
        *,
        sockjs: bool,
        heartbeat_interval: float,
        session_id: str = "",
        dead_peer_timeout: float = 0.0,
    ):
        super().__init__(session_id or "raw", ws.remote_addr)
        self._ws = ws
        self._sockjs = sockjs
        self._heartbeat_interval = heartbeat_interval
        self._dead_peer_timeout = dead_peer_timeout
        self._inbox: deque[str] = deque()
        self._ws_done = False
        self._beat_due = False
        self._ping_due = False
        self._writer: gevent.Greenlet[[], None] | None = None
        self._init_flush()

    def send(self, message: str) -> None:
        if self._closed:
            raise SessionClosed(f"session {self.id} to {self.remote_addr} is closed")
        self._queue(message)

    def start(self) -> None:
        self._writer = gevent.spawn(self._write_loop)
        self._ws.watch_liveness(self._dead_peer_timeout, self._ping_wanted)

    def _ping_wanted(self) -> None:
        """In the hub, from the liveness watchdog: the peer has been silent; the writer pings it
        (SockJS clients send nothing when idle, but every WebSocket peer answers a ping)."""
        self._ping_due = True
        self._wakeup.set()

    def _overflow(self) -> None:
        ServerSession._overflow(self)
        self._ws.abort()

    def recv(self) -> str | None:
        while True:
            if self._inbox and not self._closed:
                return self._inbox.popleft()
            if self._ws_done:
                return None
            text = self._ws.recv_text()
            if text is None:
                self._ws_done = True
                if not self._closed:  # the peer went away: nothing to tell it
                    self._closed = True
                    self._wakeup.set()
                continue
            if self._closed:
                continue  # closing: read on until the peer's close reply
            if not self._sockjs:
                return text
            try:
                self._inbox.extend(decode_client_payload(text))
            except RemoteProtocolError as exc:
                # sockjs-go closes the connection on a payload it cannot decode.
                log.info("closing SockJS WebSocket from %s: %s", self.remote_addr, exc)
                self._closed = True
                self._take_pending()
                self._ws.close(websocket.CLOSE_PROTOCOL_ERROR, "Broken framing.")
                self._wakeup.set()

    def _write_loop(self) -> None:
        ws = self._ws
        # One repeating timer per session marks heartbeats due; the writer itself
        # waits without a timeout, so a message costs no timer start/stop.
        beat = gevent.get_hub().loop.timer(self._heartbeat_interval, self._heartbeat_interval)
        beat.start(self._heartbeat_due)
        try:
            if self._sockjs:
                ws.send_text(OPEN)
            while True:
                if self._send_tail():
                    continue
                if self._pending:
                    messages = self._take_pending()
                    if self._sockjs:
                        for batch in batches(messages):
                            ws.send_text(encode_messages(batch))
                    else:
                        ws.send_texts(messages)
                    continue
                if self._closed:
                    self._send_close()
                    return
                if self._beat_due:
                    self._beat_due = False
                    if self._sockjs:
                        ws.send_text(HEARTBEAT)
                    else:
                        ws.ping()
                    continue
                if self._ping_due:
                    self._ping_due = False
                    ws.ping()
                    continue
                self._wakeup.clear()
                self._writer_idle = True
                self._wakeup.wait()
                self._writer_idle = False
        except websocket.WebSocketClosed:
            pass
        except Exception:
            log.exception("WebSocket writer for %s failed", self.remote_addr)
        finally:
            beat.close()
            self._closed = True

    def _heartbeat_due(self) -> None:
        self._beat_due = True
        self._wakeup.set()

    def _send_close(self) -> None:
        if self._ws.closed:
            return
        code = self.close_code or websocket.CLOSE_NORMAL
        if self._sockjs:
            if self._close_frame is not None:
                self._ws.send_text(self._close_frame)
            self._ws.close(websocket.CLOSE_NORMAL)
        elif code == websocket.CLOSE_NORMAL or 3000 <= code <= 4999:
            self._ws.close(code, self.close_reason)  # e.g. 3000 "Go away!": a valid WebSocket code
        else:
            self._ws.close(websocket.CLOSE_NORMAL)

    def finish(self) -> None:
        """After ``on_session``: let the writer send the close, then release the socket (bounded)."""
        self.close()
        # gevent documents False as "time out silently"; the types-gevent stub leaves it out.
        with gevent.Timeout(2 * websocket.CLOSE_TIMEOUT, False):  # type: ignore[arg-type]
            if self._writer is not None:
                self._writer.join()
            self._ws.close()
            self._ws.wait_closed(None)
        self._ws.abort()
        if self._writer is not None:
            self._writer.kill(block=False)


class XhrSession(ServerSession):
    """A session whose frames go out in HTTP responses: one per ``xhr`` poll, or a
    stream (``xhr_streaming``, ``eventsource``).

    Messages from ``xhr_send`` wait in an inbox for ``recv``. With no receiver
    attached for ``disconnect_delay`` seconds the session ends and leaves the
    server's table.
    """

    def __init__(self, server: SockJSServer, session_id: str, remote_addr: str):
        super().__init__(session_id, remote_addr)
        self._server = server
        self._inbox: Queue[str | None] = Queue()  # None: no more messages
        self._opened = False  # "o" delivered
        self._attached = False
        self._reaped = False  # ended because the client stopped polling
        self._timer: Any = None
        self._start_timer()

    def recv(self) -> str | None:
        if self._closed and not self._reaped:
            return None
        message = self._inbox.get()  # once reaped: what was queued, then None
        if message is None or (self._closed and not self._reaped):
            self._inbox.put(None)
            return None
        return message

    def deliver(self, messages: list[str]) -> None:
        """Queue messages from an ``xhr_send`` for ``recv``."""
        if not self._closed:
            for message in messages:
                self._inbox.put(message)

    def _on_close(self) -> None:
        self._inbox.put(None)  # wakes a pending recv

    # -- receivers --------------------------------------------------------------------

    def _attach(self) -> bool:
        if self._attached:
            return False
        self._attached = True
        self._stop_timer()
        return True

    def _detach(self) -> None:
        self._attached = False
        self._start_timer()

    def _next_frame(self, timeout: float) -> str:
        """The next frame for the attached receiver: messages, close, or ``h`` after ``timeout``."""
        if not self._opened:
            self._opened = True
            return OPEN
        deadline = time.monotonic() + timeout
        while True:
            frame = self._take_frame()
            if frame is not None:
                return frame
            if self._closed:
                return self._close_frame or encode_close(*GO_AWAY)
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return HEARTBEAT
            self._wakeup.clear()
            self._wakeup.wait(remaining)

    def poll(self) -> str:
        """One frame for an ``xhr`` poll (blocks up to the heartbeat interval)."""
        if not self._attach():
            return encode_close(*ANOTHER_CONNECTION)
        try:
            return self._next_frame(self._server.heartbeat_interval)
        finally:
            self._detach()

    def stream(self, limit: int, prelude: bytes, template: str) -> Iterator[bytes]:
        """A streaming response body: ``prelude``, then frames (each formatted with
        ``template``) until ``limit`` bytes of them are out."""
        yield prelude
        if not self._attach():
            yield (template % encode_close(*ANOTHER_CONNECTION)).encode()
            return
        try:
            sent = 0
            while sent < limit:
                frame = self._next_frame(self._server.heartbeat_interval)
                data = (template % frame).encode()
                yield data
                sent += len(data)
                if frame[0] == "c":
                    return
        finally:
            self._detach()

    # -- reaping ------------------------------------------------------------------------

    def _start_timer(self) -> None:
        self._stop_timer()
        self._timer = gevent.get_hub().loop.timer(self._server.disconnect_delay)
        self._timer.start(self._on_timer)

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.stop()
            self._timer.close()
            self._timer = None

    def _on_timer(self) -> None:
        # Runs in the hub: must not block.
        try:
            self._stop_timer()
            if self._attached:
                return
            if not self._closed:
                log.debug("reaping SockJS session %s from %s", self.id, self.remote_addr)
                self._reaped = True
                self.close()
            self._server._forget(self)
        except Exception:
            log.exception("reaping SockJS session %s failed", self.id)
