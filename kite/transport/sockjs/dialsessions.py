"""The dialing side's sessions: what :func:`kite.transport.sockjs.client.dial` returns.

:class:`WebSocketClientSession` carries SockJS frames (or, raw, plain messages)
over a client WebSocket and flushes from the hub at the end of each loop turn;
:class:`XhrClientSession` long-polls (or streams) ``xhr``/``xhr_streaming`` and
posts ``xhr_send`` through one process-wide ``requests`` session. Both coalesce
the sends of one turn into one payload.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent.event import Event
from gevent.queue import Queue

from kite.errors import RemoteProtocolError
from kite.transport import websocket
from kite.transport.flush import HubFlush
from kite.transport.session import BACKLOG_CLOSE_CODE, BACKLOG_CLOSE_REASON, SendBacklogExceeded, Session, SessionClosed
from kite.wire.sockjs import KIND_CLOSE, KIND_MESSAGES, KIND_OPEN, batches, decode_server_frame, encode_client_payload

log = logging.getLogger("kite.sockjs")

#: Seconds a dialed session may go without receiving anything from the server (a message, a
#: SockJS heartbeat, a pong) before it is declared dead and closed: well above the server's
#: heartbeat (10 s for Go kites, 25 s for sockjs-node), so an idle but healthy session never
#: times out. It is the read timeout of every XHR poll, stream read and send; WebSocket
#: sessions ping a silent server after a third of it.
DEAD_PEER_TIMEOUT = 30.0
#: Close code and reason a dialed XHR session ends with when the server has forgotten it
#: (sockjs-client's 1006 "Server lost session" for a second ``o``).
SESSION_LOST = (1006, "Server lost session")
#: Connections kept per host by the shared requests session: each XHR session
#: holds one for its poll and briefly one for a send.
XHR_POOL_SIZE = 64


class DialError(ConnectionError):
    """Dialing a kite failed; the message names the URL, ``__cause__`` holds the reason."""

    def __init__(self, message: str, url: str = "", status_code: int | None = None):
        super().__init__(message)
        self.url = url
        #: The HTTP status that refused us, when there was one.
        self.status_code = status_code


class DialTimeoutError(DialError, TimeoutError):
    """Dialing did not finish within the timeout."""


_http_session: Any = None


def _http() -> Any:
    """The process-wide requests session (one cookie jar, like the Go client)."""
    global _http_session
    if _http_session is None:
        import requests
        from requests.adapters import HTTPAdapter

        session = requests.Session()
        adapter = HTTPAdapter(pool_connections=16, pool_maxsize=XHR_POOL_SIZE)
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        _http_session = session
    return _http_session


class ClientSession(Session):
    """Dialing-side session: a writer greenlet flushes the coalesced sends."""

    def __init__(self, remote_addr: str):
        self.remote_addr = remote_addr
        #: The server's close code and reason, once a ``c[...]`` frame arrived.
        self.close_code: int | None = None
        self.close_reason = ""
        self._pending: list[str] = []
        self._pending_chars = 0  # characters in _pending
        self._wakeup = Event()
        self._closed = False
        self._closed_locally = False  # by close(): recv drops what is still queued
        self._writer_idle = False  # parked in the writer loop
        self._ping_due = False  # the liveness watchdog asks the writer to ping
        self._writer = gevent.spawn(self._write_loop)

    def send(self, message: str) -> None:
        if self._closed:
            raise SessionClosed(f"session to {self.remote_addr} is closed")
        if not isinstance(message, str):
            raise TypeError(f"message must be str, not {type(message).__name__}")
        if self._pending_chars + len(message) > self.max_backlog:
            self._overflow()
            raise SendBacklogExceeded(f"session to {self.remote_addr}: {self.max_backlog} characters queued")
        self._pending.append(message)
        self._pending_chars += len(message)
        if len(self._pending) == 1:
            self._wakeup.set()  # the writer runs on a later loop turn: later sends join this payload

    def close(self, code: int = 3000, reason: str = "Go away!") -> None:
        """Close the session: queued sends are flushed first (waiting at most
        :data:`~kite.transport.websocket.CLOSE_TIMEOUT`, so that a script that exits right
        after ``close()`` still delivers them), then the transport is closed."""
        if not self._closed:
            self._closed = True
            self._closed_locally = True
            self._wakeup.set()  # the writer flushes what is queued, then closes the transport
            self._on_close()
        current = gevent.getcurrent()
        if current is not self._writer and current is not gevent.get_hub():
            self._writer.join(websocket.CLOSE_TIMEOUT)

    @property
    def closed(self) -> bool:
        return self._closed

    def backlog(self) -> int:
        return self._pending_chars

    def _take_pending(self) -> list[str]:
        """In the writer: everything queued, the queue emptied."""
        messages, self._pending = self._pending, []
        self._pending_chars = 0
        return messages

    def _overflow(self) -> None:
        """The send queue is over its cap: the server is not reading. End the session now, dropping
        what is queued (waiting for it to flush, as :meth:`close` does, would wait on that server)."""
        log.warning("closing session to %s: %s (%d characters)", self.remote_addr, BACKLOG_CLOSE_REASON,
                    self._pending_chars)
        self.close_code, self.close_reason = BACKLOG_CLOSE_CODE, BACKLOG_CLOSE_REASON
        self._take_pending()
        self._abort_transport()
        self._ended()

    def _write_loop(self) -> None:
        try:
            while True:
                if self._send_tail():
                    continue
                if self._pending:
                    self._write(self._take_pending())
                    continue
                if self._closed:
                    break
                if self._ping_due:
                    self._ping_due = False
                    self._ping()
                    continue
                self._wakeup.clear()
                self._writer_idle = True
                self._wakeup.wait()
                self._writer_idle = False
        except Exception as exc:
            log.info("sending to %s failed: %s", self.remote_addr, exc)
            self._ended()
        self._close_transport()

    def _ended(self) -> None:
        """The transport ended from the peer's side."""
        if not self._closed:
            self._closed = True
            self._wakeup.set()
            self._on_close()

    def _write(self, messages: list[str]) -> None:
        raise NotImplementedError

    def _ping(self) -> None:
        """Hook for the writer: ping the server (the liveness watchdog found it silent)."""

    def _abort_transport(self) -> None:
        """Hook: drop the transport at once, waking a writer blocked on it."""

    def _send_tail(self) -> bool:
        """Hook for the writer: send bytes a direct write left over (none here)."""
        return False

    def _on_close(self) -> None:
        """Hook: the session just became closed (wake readers)."""

    def _close_transport(self) -> None:
        """Hook, in the writer greenlet after the last flush: release the transport."""


class WebSocketClientSession(HubFlush, ClientSession):
    """A dialed WebSocket, SockJS-framed or raw; sends are flushed at the end of each loop turn."""

    _sockjs_payload = staticmethod(encode_client_payload)

    def __init__(self, ws: websocket.WebSocket, sockjs: bool, dead_peer_timeout: float = DEAD_PEER_TIMEOUT):
        self._ws = ws
        self._sockjs = sockjs
        self._inbox: deque[str] = deque()
        self._recv_done = False
        self._init_flush()
        super().__init__(ws.remote_addr)
        ws.watch_liveness(dead_peer_timeout, self._ping_wanted)

    def _ping_wanted(self) -> None:
        """In the hub, from the liveness watchdog: the server has been silent; the writer pings it."""
        self._ping_due = True
        self._wakeup.set()

    def _ping(self) -> None:
        self._ws.ping()

    def _abort_transport(self) -> None:
        self._ws.abort()

    def send(self, message: str) -> None:
        if self._closed:
            raise SessionClosed(f"session to {self.remote_addr} is closed")
        self._queue(message)

    def recv(self) -> str | None:
        while True:
            if self._inbox and not self._closed:
                return self._inbox.popleft()
            if self._recv_done:
                return None
            text = self._ws.recv_text()
            if text is None:
                self._recv_done = True
                self._ended()
                continue
            if self._closed:
                continue  # closing: read on until the server's close reply
            if not self._sockjs:
                return text
            try:
                kind, payload = decode_server_frame(text)
            except RemoteProtocolError as exc:
                log.info("bad SockJS frame from %s: %s", self.remote_addr, exc)
                self._recv_done = True
                self._ended()
                self._ws.close(websocket.CLOSE_PROTOCOL_ERROR, "Broken framing.")
                continue
            if kind == KIND_MESSAGES:
                self._inbox.extend(payload)
            elif kind == KIND_CLOSE:
                self.close_code, self.close_reason = payload
                self._recv_done = True
                self._ended()
            # "open" and "heartbeat": nothing to do

    def _write(self, messages: list[str]) -> None:
        if self._sockjs:
            for batch in batches(messages):
                self._ws.send_text(encode_client_payload(batch))
        else:
            self._ws.send_texts(messages)

    def _close_transport(self) -> None:
        self._ws.close(websocket.CLOSE_NORMAL)


class XhrClientSession(ClientSession):
    """XHR polling or streaming: a receiver greenlet feeds an inbox; sends are ``xhr_send`` POSTs."""

    def __init__(
        self,
        session_url: str,
        query: str,
        streaming: bool,
        timeout: float | None,
        headers: dict[str, str],
        verify: bool | str = True,
        dead_peer_timeout: float = DEAD_PEER_TIMEOUT,
    ):
        self._session_url = session_url
        #: Read timeout of every request: a server that sends not even a heartbeat for this long is gone.
        self._read_timeout = dead_peer_timeout if dead_peer_timeout > 0 else None
        self._verify = verify
        self._query = f"?{query}" if query else ""
        self._streaming = streaming
        self._timeout = timeout
        self._headers = {"Content-Type": "text/plain", **headers}
        self._inbox: Queue[str | None] = Queue()  # None: no more messages
        self._receiver: gevent.Greenlet[..., None] | None = None
        super().__init__(urlsplit(session_url).netloc)

    def _url(self, endpoint: str) -> str:
        return f"{self._session_url}/{endpoint}{self._query}"

    def _post(self, endpoint: str, body: str = "", stream: bool = False, read_timeout: float | None = None) -> Any:
        return _http().post(
            self._url(endpoint),
            data=body.encode(),
            headers=self._headers,
            timeout=(self._timeout, read_timeout),
            stream=stream,
            verify=self._verify,
        )

    # -- opening ------------------------------------------------------------------------

    def open(self) -> None:
        """Make the first receive request and expect ``o``; raises on failure."""
        endpoint = "xhr_streaming" if self._streaming else "xhr"
        response = self._post(endpoint, stream=self._streaming, read_timeout=self._timeout or self._read_timeout)
        if response.status_code != 200:
            response.close()
            raise DialError(
                f"{self._url(endpoint)}: HTTP {response.status_code}", self._url(endpoint), response.status_code
            )
        if self._streaming:
            frames = self._frames(response)
            first = next(frames, None)
        else:
            frames, first = iter(()), response.text
        if not first or not first.startswith("o"):
            response.close()
            raise DialError(
                f"{self._url(endpoint)}: expected SockJS open frame, got {(first or '')[:40]!r}", self._url(endpoint)
            )
        self._receiver = gevent.spawn(self._receive_loop, frames, response if self._streaming else None)

    # -- receiving ------------------------------------------------------------------------

    def recv(self) -> str | None:
        if self._closed_locally:
            return None
        message = self._inbox.get()  # after a remote end: what was queued, then None
        if message is None or self._closed_locally:
            self._inbox.put(None)
            return None
        return message

    def _on_close(self) -> None:
        self._inbox.put(None)
        receiver = self._receiver
        if receiver is not None and receiver is not gevent.getcurrent():
            receiver.kill(block=False)

    @staticmethod
    def _frames(response: Any) -> Iterator[str]:
        """Frames of a streaming response, one per line, the ``h...h`` prelude skipped."""
        buffer = b""
        for chunk in response.iter_content(chunk_size=None):
            buffer += chunk
            *lines, buffer = buffer.split(b"\n")
            for line in lines:
                if line and line.strip(b"h"):
                    yield line.decode("utf-8", "replace")

    def _receive_loop(self, frames: Iterable[str], response: Any) -> None:
        try:
            while not self._closed:
                for frame in frames:
                    if self._handle_frame(frame):
                        return
                if response is not None:
                    response.close()
                frames, response = self._next_frames()
        except Exception as exc:
            if not self._closed:
                log.info("receiving from %s failed: %s", self._session_url, exc)
        finally:
            if response is not None:
                response.close()
            self._ended()

    def _next_frames(self) -> tuple[Iterable[str], Any]:
        """Open the next receive request. A poll that times out (not even a heartbeat came within the
        read timeout) raises: the server is stopped or gone, and the session ends."""
        endpoint = "xhr_streaming" if self._streaming else "xhr"
        response = self._post(endpoint, stream=self._streaming, read_timeout=self._read_timeout)
        if response.status_code != 200:
            response.close()
            raise ConnectionError(f"{self._url(endpoint)}: HTTP {response.status_code}")
        if self._streaming:
            return self._frames(response), response
        return [response.text], None

    def _handle_frame(self, frame: str) -> bool:
        """Queue a frame's messages; True when the session is over.

        An ``o`` after the first means the server has forgotten our session (it reaped it while
        we could not poll) and opened a new one under its id: what we sent and awaited is lost,
        so the session is over, as sockjs-client treats it.
        """
        kind, payload = decode_server_frame(frame)
        if kind == KIND_MESSAGES:
            for message in payload:
                self._inbox.put(message)
        elif kind == KIND_CLOSE:
            self.close_code, self.close_reason = payload
            return True
        elif kind == KIND_OPEN:
            log.info("%s: the server opened our session again (it had dropped it); ending it", self._session_url)
            self.close_code, self.close_reason = SESSION_LOST
            return True
        return False

    # -- sending ----------------------------------------------------------------------------

    def _write(self, messages: list[str]) -> None:
        for batch in batches(messages):  # each body under the server's size limit
            response = self._post("xhr_send", encode_client_payload(batch), read_timeout=self._read_timeout)
            response.close()
            if response.status_code == 404:
                raise ConnectionError("XHR session does not exist")
            if response.status_code not in (200, 204):
                raise ConnectionError(f"xhr_send: HTTP {response.status_code}")
