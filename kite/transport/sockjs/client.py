"""The Go-style SockJS dialer (PROTOCOL.md §1.4): :func:`dial` returns a :class:`~kite.transport.session.Session`.

Transports:

* ``"websocket"`` -- ``ws(s)://host:port/path/{server}/{session}/websocket`` with
  ``Origin: <scheme>://host:port``, like the Go client;
* ``"xhr_polling"`` (alias ``"xhr"``) -- ``POST .../xhr`` long polls and
  ``POST .../xhr_send``, through one process-wide ``requests.Session`` (shared
  cookie jar, for load-balancer sticky cookies);
* ``"xhr_streaming"`` -- ``POST .../xhr_streaming``, frames read line by line;
* ``"auto"`` -- WebSocket, falling back to XHR polling only when the WebSocket
  handshake is rejected (an HTTP status other than 101), like the 2018 Go client.

A ``ws://`` or ``wss://`` URL dials a raw WebSocket (one text message per
message, no SockJS framing), whatever the transport.

The WebSocket transports use gevent's own sockets and work without monkey
patching. The XHR transports use ``requests``, which is only cooperative in a
monkey-patched process (``gevent.monkey.patch_all()``); unpatched, a long poll
blocks the whole process.

Sends are coalesced: messages queued within one turn of the event loop go out
as one client payload ``["m1","m2"]`` (or, raw, in one socket write).
"""

from __future__ import annotations

import logging
import random
import secrets
import ssl
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
from gevent.event import Event
from gevent.queue import Queue

from kite.errors import RemoteProtocolError
from kite.transport import websocket
from kite.transport.flush import HubFlush
from kite.transport.session import Session, SessionClosed
from kite.wire.sockjs import KIND_CLOSE, KIND_MESSAGES, decode_server_frame, encode_client_payload

log = logging.getLogger("kite.sockjs")

#: Read timeout of one XHR poll or streaming read, in seconds: well above the
#: server's heartbeat (10 s for Go kites, 25 s for sockjs-node), so an idle but
#: healthy session never times out; a timed-out poll is simply retried.
XHR_READ_TIMEOUT = 30.0
#: Connections kept per host by the shared requests session: each XHR session
#: holds one for its poll and briefly one for a send.
XHR_POOL_SIZE = 64
_TRANSPORTS = {
    "websocket": "websocket",
    "xhr_polling": "xhr_polling",
    "xhr-polling": "xhr_polling",
    "xhr": "xhr_polling",
    "xhrpolling": "xhr_polling",  # Go's XHRPolling
    "xhr_streaming": "xhr_streaming",
    "xhr-streaming": "xhr_streaming",
    "xhrstreaming": "xhr_streaming",
    "auto": "auto",
}


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


class _ClientSession(Session):
    """Dialing-side session: a writer greenlet flushes the coalesced sends."""

    def __init__(self, remote_addr: str):
        self.remote_addr = remote_addr
        #: The server's close code and reason, once a ``c[...]`` frame arrived.
        self.close_code: int | None = None
        self.close_reason = ""
        self._pending: list[str] = []
        self._wakeup = Event()
        self._closed = False
        self._closed_locally = False  # by close(): recv drops what is still queued
        self._writer_idle = False  # parked in the writer loop
        self._writer = gevent.spawn(self._write_loop)

    def send(self, message: str) -> None:
        if self._closed:
            raise SessionClosed(f"session to {self.remote_addr} is closed")
        if not isinstance(message, str):
            raise TypeError(f"message must be str, not {type(message).__name__}")
        self._pending.append(message)
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

    def _write_loop(self) -> None:
        try:
            while True:
                if self._send_tail():
                    continue
                if self._pending:
                    messages, self._pending = self._pending, []
                    self._write(messages)
                    continue
                if self._closed:
                    break
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

    def _send_tail(self) -> bool:
        """Hook for the writer: send bytes a direct write left over (none here)."""
        return False

    def _on_close(self) -> None:
        """Hook: the session just became closed (wake readers)."""

    def _close_transport(self) -> None:
        """Hook, in the writer greenlet after the last flush: release the transport."""


class _WebSocketClientSession(HubFlush, _ClientSession):
    """A dialed WebSocket, SockJS-framed or raw; sends are flushed at the end of each loop turn."""

    def __init__(self, ws: websocket.WebSocket, sockjs: bool):
        self._ws = ws
        self._sockjs = sockjs
        self._inbox: deque[str] = deque()
        self._recv_done = False
        self._init_flush()
        super().__init__(ws.remote_addr)

    def send(self, message: str) -> None:
        if self._closed:
            raise SessionClosed(f"session to {self.remote_addr} is closed")
        self._queue(message)

    def _frame(self, messages: list[str]) -> bytes:
        if self._sockjs:
            return self._ws.text_frame(encode_client_payload(messages))
        return b"".join(map(self._ws.text_frame, messages))

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
            self._ws.send_text(encode_client_payload(messages))
        else:
            self._ws.send_texts(messages)

    def _close_transport(self) -> None:
        self._ws.close(websocket.CLOSE_NORMAL)


class _XhrClientSession(_ClientSession):
    """XHR polling or streaming: a receiver greenlet feeds an inbox; sends are ``xhr_send`` POSTs."""

    def __init__(
        self,
        session_url: str,
        query: str,
        streaming: bool,
        timeout: float | None,
        headers: dict[str, str],
        verify: bool | str = True,
    ):
        self._session_url = session_url
        self._verify = verify
        self._query = f"?{query}" if query else ""
        self._streaming = streaming
        self._timeout = timeout
        self._headers = {"Content-Type": "text/plain", **headers}
        self._inbox: Queue = Queue()
        self._receiver: gevent.Greenlet | None = None
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
        response = self._post(endpoint, stream=self._streaming, read_timeout=self._timeout or XHR_READ_TIMEOUT)
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

    def _receive_loop(self, frames: Iterator[str], response: Any) -> None:
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
        """Open the next receive request; a timed-out poll is retried."""
        import requests

        endpoint = "xhr_streaming" if self._streaming else "xhr"
        while True:
            try:
                response = self._post(endpoint, stream=self._streaming, read_timeout=XHR_READ_TIMEOUT)
            except requests.Timeout:
                continue
            if response.status_code != 200:
                response.close()
                raise ConnectionError(f"{self._url(endpoint)}: HTTP {response.status_code}")
            if self._streaming:
                return self._frames(response), response
            return [response.text], None

    def _handle_frame(self, frame: str) -> bool:
        """Queue a frame's messages; True when the session is over."""
        kind, payload = decode_server_frame(frame)
        if kind == KIND_MESSAGES:
            for message in payload:
                self._inbox.put(message)
        elif kind == KIND_CLOSE:
            self.close_code, self.close_reason = payload
            return True
        return False

    # -- sending ----------------------------------------------------------------------------

    def _write(self, messages: list[str]) -> None:
        response = self._post("xhr_send", encode_client_payload(messages), read_timeout=XHR_READ_TIMEOUT)
        response.close()
        if response.status_code == 404:
            raise ConnectionError("XHR session does not exist")
        if response.status_code not in (200, 204):
            raise ConnectionError(f"xhr_send: HTTP {response.status_code}")


def _ws_urls(url: str) -> tuple[str, str]:
    """``(ws_url, origin)`` for a SockJS base URL (PROTOCOL.md §1.4 steps 1–4)."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    port = parts.port or (443 if scheme == "https" else 80)
    hostport = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    path = parts.path if parts.path.endswith("/") else parts.path + "/"
    path += f"{random.randint(100, 999)}/{secrets.token_hex(10)}/websocket"
    ws_url = urlunsplit(("wss" if scheme == "https" else "ws", hostport, path, parts.query, ""))
    return ws_url, f"{scheme}://{hostport}"


def tls_context(verify: bool | str) -> ssl.SSLContext:
    """A client TLS context: ``True`` system CAs, ``False`` no verification, a path: that CA bundle."""
    if verify is False:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        return context
    return ssl.create_default_context(cafile=verify if isinstance(verify, str) else None)


def _dial_websocket(
    url: str, sockjs: bool, timeout: float | None, headers: dict[str, str], verify: bool | str = True
) -> Session:
    if sockjs:
        ws_url, origin = _ws_urls(url)
        if not any(name.lower() == "origin" for name in headers):
            headers = {"Origin": origin, **headers}
    else:
        ws_url = url
    secure = urlsplit(ws_url).scheme.lower() == "wss"
    context = tls_context(verify) if secure and verify is not True else None
    ws = websocket.connect(ws_url, headers=headers, timeout=timeout, ssl_context=context)
    return _WebSocketClientSession(ws, sockjs=sockjs)


def _dial_xhr(
    url: str, streaming: bool, timeout: float | None, headers: dict[str, str], verify: bool | str = True
) -> Session:
    parts = urlsplit(url)
    session_path = f"{parts.path.rstrip('/')}/{random.randint(100, 999)}/{secrets.token_hex(10)}"
    session_url = urlunsplit((parts.scheme, parts.netloc, session_path, "", ""))
    session = _XhrClientSession(session_url, parts.query, streaming, timeout, headers, verify)
    try:
        with gevent.Timeout(timeout, TimeoutError(f"opening {session_url} timed out after {timeout} s")):
            session.open()
    except BaseException:
        session.close()
        raise
    return session


def dial(
    url: str,
    transport: str = "websocket",
    timeout: float | None = None,
    headers: Mapping[str, str] | None = None,
    verify: bool | str = True,
) -> Session:
    """Connect to the kite at ``url`` and return the open :class:`~kite.transport.session.Session`.

    ``url`` is the SockJS base URL, normally ``http(s)://host:port/kite``; a
    ``ws://``/``wss://`` URL dials a raw WebSocket instead. ``transport`` is
    ``"websocket"`` (default), ``"xhr_polling"`` (alias ``"xhr"``),
    ``"xhr_streaming"`` or ``"auto"``. ``timeout`` (seconds) bounds connecting
    and the handshake. ``headers`` are added to the handshake / HTTP requests.
    ``verify`` checks ``https``/``wss`` certificates as ``requests`` does: ``True``
    against the system CAs, a path against that CA bundle, ``False`` not at all.

    Raises :class:`DialError` (a :class:`ConnectionError`;
    :class:`DialTimeoutError` on timeout) naming the URL.
    """
    try:
        kind = _TRANSPORTS[transport.lower()]
    except KeyError:
        raise ValueError(f"unknown transport {transport!r}; use one of {sorted(_TRANSPORTS)}") from None
    extra = dict(headers or {})
    scheme = urlsplit(url).scheme.lower()
    try:
        if scheme in ("ws", "wss"):
            return _dial_websocket(url, False, timeout, extra, verify)
        if scheme not in ("http", "https"):
            raise DialError(f"invalid scheme in url {url!r}", url)
        if kind == "websocket":
            return _dial_websocket(url, True, timeout, extra, verify)
        if kind == "auto":
            try:
                return _dial_websocket(url, True, timeout, extra, verify)
            except websocket.HandshakeError as exc:
                if exc.status_code is None or exc.status_code == 101:
                    raise
                log.info("WebSocket to %s refused (HTTP %s); falling back to XHR polling", url, exc.status_code)
            kind = "xhr_polling"
        return _dial_xhr(url, kind == "xhr_streaming", timeout, extra, verify)
    except DialError:
        raise
    except TimeoutError as exc:
        raise DialTimeoutError(f"dialing {url} ({transport}) timed out: {exc}", url) from exc
    except websocket.HandshakeError as exc:
        raise DialError(f"dialing {url} ({transport}) failed: {exc}", url, exc.status_code) from exc
    except Exception as exc:
        if _is_requests_timeout(exc):
            raise DialTimeoutError(f"dialing {url} ({transport}) timed out: {exc}", url) from exc
        raise DialError(f"dialing {url} ({transport}) failed: {exc}", url) from exc


def _is_requests_timeout(exc: Exception) -> bool:
    import requests

    return isinstance(exc, requests.Timeout)
