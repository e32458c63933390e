"""The SockJS server: a pure WSGI application (PROTOCOL.md §1.1–§1.3, §1.5).

:class:`SockJSServer` serves, under its prefix (``/kite``), the greeting,
``/info``, the SockJS-framed WebSocket ``/{server}/{session}/websocket``, the
raw ``/websocket`` endpoint kite.js' ``ws`` clients use, the XHR polling and
streaming transports, and EventSource. Each new session is handed to ``on_session`` -- the kite
runtime's entry point -- as a :class:`~kite.session.Session`.

Every session coalesces its sends: messages queued within one turn of the
event loop leave as one ``a[...]`` frame. ``send()`` only appends to a list and
sets an event; the greenlet that writes (the WebSocket writer, or the pending
XHR poll) runs on a later loop turn and takes the whole list at once.

Run it under gevent's WSGI server with gevent-websocket's handler
(:func:`kite.server.make_server`) or gunicorn's ``kite.server.GeventKiteWorker``.
A peer's bad input never kills the server: every greenlet catches and logs.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator
from email.utils import formatdate
from typing import Any

import gevent
from gevent.event import Event
from gevent.queue import Queue

from kite import websocket
from kite.errors import RemoteProtocolError
from kite.session import Session, SessionClosed
from kite.sockjs.frames import (
    ANOTHER_CONNECTION,
    GO_AWAY,
    HEARTBEAT,
    OPEN,
    decode_client_payload,
    encode_close,
    encode_messages,
)

log = logging.getLogger("kite.sockjs")

#: Go kites send ``h`` every 10 s, not sockjs' default 25 s (PROTOCOL.md §1.3).
HEARTBEAT_INTERVAL = 10.0
#: How long a polling session lives with no poll attached (sockjs-go 2016 default).
DISCONNECT_DELAY = 5.0
#: Bytes of frames per xhr_streaming response before we end it and the client
#: reconnects, so browsers do not hoard one endless response (sockjs-go default).
STREAMING_LIMIT = 128 * 1024
#: 2 KiB of ``h`` before a streaming response: makes old browsers and buffering
#: proxies hand the stream to the application (sockjs protocol).
XHR_STREAMING_PRELUDE = b"h" * 2048 + b"\n"
#: One year, the cache lifetime sockjs-go gives OPTIONS answers.
CACHE_SECONDS = 365 * 24 * 60 * 60

_TEXT = "text/plain; charset=UTF-8"
_JS = "application/javascript; charset=UTF-8"
_NO_CACHE = ("Cache-Control", "no-store, no-cache, must-revalidate, max-age=0")
_SEGMENT = r"[^/.]+"  # {server} and {session}: any segment without "/" or "."
# (path pattern under the prefix, {HTTP method: handler name}); method order = Allow order (sockjs-go).
_ROUTES = [
    (re.compile(r"^/?$"), {"GET": "_greeting"}),
    (re.compile(r"^/info$"), {"OPTIONS": "_info_options", "GET": "_info"}),
    (re.compile(r"^/websocket$"), {"GET": "_raw_websocket"}),
    (re.compile(rf"^/{_SEGMENT}/({_SEGMENT})/websocket$"), {"GET": "_sockjs_websocket"}),
    (re.compile(rf"^/{_SEGMENT}/({_SEGMENT})/xhr$"), {"POST": "_xhr_poll", "OPTIONS": "_xhr_options"}),
    (re.compile(rf"^/{_SEGMENT}/({_SEGMENT})/xhr_send$"), {"POST": "_xhr_send", "OPTIONS": "_xhr_options"}),
    (
        re.compile(rf"^/{_SEGMENT}/({_SEGMENT})/xhr_streaming$"),
        {"POST": "_xhr_streaming", "OPTIONS": "_xhr_options"},
    ),
    (re.compile(rf"^/{_SEGMENT}/({_SEGMENT})/eventsource$"), {"GET": "_eventsource"}),
]


def _remote_addr(environ: dict[str, Any]) -> str:
    addr, port = environ.get("REMOTE_ADDR", ""), environ.get("REMOTE_PORT", "")
    return f"{addr}:{port}" if port else addr


def _cors(environ: dict[str, Any]) -> list[tuple[str, str]]:
    """sockjs-go ``xhrCors``: reflect the Origin (``*`` when missing or ``null``)."""
    origin = environ.get("HTTP_ORIGIN", "")
    headers = [
        ("Access-Control-Allow-Origin", "*" if origin in ("", "null") else origin),
        ("Access-Control-Allow-Credentials", "true"),
    ]
    requested = environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS", "")
    if requested:
        headers.append(("Access-Control-Allow-Headers", requested))
    return headers


def _cache_for() -> list[tuple[str, str]]:
    return [
        ("Cache-Control", f"public, max-age={CACHE_SECONDS}"),
        ("Expires", formatdate(time.time() + CACHE_SECONDS, usegmt=True)),
        ("Access-Control-Max-Age", str(CACHE_SECONDS)),
    ]


def _respond(start_response: Callable, status: str, headers: list, body: bytes = b"") -> list[bytes]:
    if not status.startswith("204"):
        headers = [*headers, ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body] if body else []


class _ServerSession(Session):
    """Outgoing side shared by all served sessions: a coalescing queue."""

    def __init__(self, session_id: str, remote_addr: str):
        self.id = session_id
        self.remote_addr = remote_addr
        self.close_code: int | None = None
        self.close_reason = ""
        self._pending: list[str] = []
        self._wakeup = Event()  # set when there is something for the writer/receiver
        self._closed = False
        self._close_frame: str | None = None

    def send(self, message: str) -> None:
        if self._closed:
            raise SessionClosed(f"session {self.id} to {self.remote_addr} is closed")
        if not isinstance(message, str):
            raise TypeError(f"message must be str, not {type(message).__name__}")
        self._pending.append(message)
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

    @property
    def closed(self) -> bool:
        return self._closed

    def _take_frame(self) -> str | None:
        if not self._pending:
            return None
        messages, self._pending = self._pending, []
        return encode_messages(messages)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.remote_addr} closed={self._closed}>"


class _WebSocketSession(_ServerSession):
    """A session on one WebSocket, SockJS-framed or raw (one text message per message).

    ``recv`` reads the socket in the caller's greenlet; a writer greenlet sends
    ``o``, the coalesced frames and the heartbeats (``h``, or WebSocket pings on
    raw connections), and finally the close.
    """

    def __init__(self, ws: websocket.WebSocket, *, sockjs: bool, heartbeat_interval: float, session_id: str = ""):
        super().__init__(session_id or "raw", ws.remote_addr)
        self._ws = ws
        self._sockjs = sockjs
        self._heartbeat_interval = heartbeat_interval
        self._inbox: deque[str] = deque()
        self._ws_done = False
        self._beat_due = False
        self._writer: gevent.Greenlet | None = None

    def start(self) -> None:
        self._writer = gevent.spawn(self._write_loop)

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
                self._pending = []
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
                if self._pending:
                    messages, self._pending = self._pending, []
                    if self._sockjs:
                        ws.send_text(encode_messages(messages))
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
                self._wakeup.clear()
                self._wakeup.wait()
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
        with gevent.Timeout(2 * websocket.CLOSE_TIMEOUT, False):
            if self._writer is not None:
                self._writer.join()
            self._ws.close()
            self._ws.wait_closed(None)
        self._ws.abort()
        if self._writer is not None:
            self._writer.kill(block=False)


class _XhrSession(_ServerSession):
    """A session whose frames go out in HTTP responses: one per ``xhr`` poll, or a
    stream (``xhr_streaming``, ``eventsource``).

    Messages from ``xhr_send`` wait in an inbox for ``recv``. With no receiver
    attached for ``disconnect_delay`` seconds the session ends and leaves the
    server's table.
    """

    def __init__(self, server: SockJSServer, session_id: str, remote_addr: str):
        super().__init__(session_id, remote_addr)
        self._server = server
        self._inbox: Queue = Queue()
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


class SockJSServer:
    """A SockJS endpoint as a WSGI application, for every path under ``prefix``.

    ``on_session(session)`` is called with a :class:`~kite.session.Session` for
    every new session; it should read until ``recv()`` returns ``None`` and
    return. Afterwards the session is closed with ``c[3000,"Go away!"]`` if still
    open. WebSocket sessions run it in the request's greenlet; XHR sessions in a
    greenlet of their own.

    ``heartbeat_interval``: seconds between ``h`` frames; ``disconnect_delay``:
    seconds a polling session survives with no poll attached;
    ``streaming_limit``: bytes per xhr_streaming response; ``max_message_size``:
    largest WebSocket message and ``xhr_send`` body accepted.
    """

    def __init__(
        self,
        prefix: str = "/kite",
        on_session: Callable[[Session], Any] | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        disconnect_delay: float = DISCONNECT_DELAY,
        streaming_limit: int = STREAMING_LIMIT,
        max_message_size: int = websocket.MAX_MESSAGE_SIZE,
    ):
        self.prefix = prefix.rstrip("/")
        self.on_session = on_session
        self.heartbeat_interval = heartbeat_interval
        self.disconnect_delay = disconnect_delay
        self.streaming_limit = streaming_limit
        self.max_message_size = max_message_size
        self._sessions: dict[str, _XhrSession] = {}  # XHR sessions by id
        self._websocket_sessions: set[_WebSocketSession] = set()

    def close(self) -> None:
        """Close every live session (for shutdown)."""
        for session in [*self._sessions.values(), *self._websocket_sessions]:
            session.close()

    # -- WSGI ----------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Any:
        rest = None
        # PATH_INFO alone (served at the root), or behind SCRIPT_NAME (mounted at the prefix).
        for path in (environ.get("PATH_INFO", ""), environ.get("SCRIPT_NAME", "") + environ.get("PATH_INFO", "")):
            if path.startswith(self.prefix) and (len(path) == len(self.prefix) or path[len(self.prefix)] == "/"):
                rest = path[len(self.prefix) :]
                break
        if rest is None:
            return self._not_found(start_response)
        method = environ.get("REQUEST_METHOD", "GET").upper()
        allowed: list[str] = []
        for pattern, methods in _ROUTES:
            match = pattern.match(rest)
            if match is None:
                continue
            name = methods.get(method)
            if name is None:
                allowed.extend(methods)
                continue
            try:
                return getattr(self, name)(environ, start_response, *match.groups())
            except Exception:
                log.exception("SockJS %s %s failed", method, path)
                return self._error(start_response, "500 Internal Server Error", "Internal Server Error")
        if allowed:
            return _respond(start_response, "405 Method Not Allowed", [("Allow", ", ".join(allowed))])
        return self._not_found(start_response)

    @staticmethod
    def _not_found(start_response: Callable) -> list[bytes]:
        return SockJSServer._error(start_response, "404 Not Found", "404 page not found")

    @staticmethod
    def _error(start_response: Callable, status: str, text: str) -> list[bytes]:
        # Go's http.Error: text/plain, nosniff, the text plus a newline.
        headers = [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff")]
        return _respond(start_response, status, headers, (text + "\n").encode())

    def _run_session(self, session: Session) -> None:
        try:
            if self.on_session is not None:
                self.on_session(session)
        except Exception:
            log.exception("on_session failed for %r", session)
        finally:
            try:
                if not session.closed:
                    session.close(*GO_AWAY)
            except Exception:
                log.exception("closing %r failed", session)

    # -- plain HTTP endpoints ------------------------------------------------------------------

    def _greeting(self, environ, start_response) -> list[bytes]:
        headers = [("Content-Type", "text/plain;charset=UTF-8")]
        return _respond(start_response, "200 OK", headers, b"Welcome to SockJS!\n")

    def _info(self, environ, start_response) -> list[bytes]:
        info = {"websocket": True, "cookie_needed": False, "origins": ["*:*"], "entropy": secrets.randbelow(2**31)}
        body = json.dumps(info, separators=(",", ":")).encode()
        headers = [*_cors(environ), _NO_CACHE, ("Content-Type", "application/json; charset=UTF-8")]
        return _respond(start_response, "200 OK", headers, body)

    def _info_options(self, environ, start_response) -> list[bytes]:
        headers = [*_cors(environ), *_cache_for(), ("Access-Control-Allow-Methods", "OPTIONS, GET")]
        return _respond(start_response, "204 No Content", headers)

    def _xhr_options(self, environ, start_response, session_id: str) -> list[bytes]:
        headers = [*_cors(environ), *_cache_for(), ("Access-Control-Allow-Methods", "OPTIONS, POST")]
        return _respond(start_response, "204 No Content", headers)

    # -- WebSocket transports -----------------------------------------------------------------

    def _raw_websocket(self, environ, start_response) -> list[bytes]:
        return self._serve_websocket(environ, start_response, sockjs=False, session_id="")

    def _sockjs_websocket(self, environ, start_response, session_id: str) -> list[bytes]:
        return self._serve_websocket(environ, start_response, sockjs=True, session_id=session_id)

    def _serve_websocket(self, environ, start_response, *, sockjs: bool, session_id: str) -> list[bytes]:
        ws = websocket.WebSocket.from_environ(environ, max_message_size=self.max_message_size)
        if ws is None:
            return self._error(start_response, "400 Bad Request", 'Can "Upgrade" only to "WebSocket".')
        session = _WebSocketSession(
            ws, sockjs=sockjs, heartbeat_interval=self.heartbeat_interval, session_id=session_id
        )
        self._websocket_sessions.add(session)
        try:
            session.start()
            self._run_session(session)
        finally:
            self._websocket_sessions.discard(session)
            session.finish()
        return []

    # -- XHR transports ---------------------------------------------------------------------

    def _session_for(self, environ: dict[str, Any], session_id: str) -> _XhrSession:
        session = self._sessions.get(session_id)
        if session is None:
            session = _XhrSession(self, session_id, _remote_addr(environ))
            self._sessions[session_id] = session
            gevent.spawn(self._run_session, session)
        return session

    def _forget(self, session: _XhrSession) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def _xhr_headers(self, environ: dict[str, Any], content_type: str) -> list[tuple[str, str]]:
        return [*_cors(environ), _NO_CACHE, ("Content-Type", content_type)]

    def _xhr_poll(self, environ, start_response, session_id: str) -> list[bytes]:
        frame = self._session_for(environ, session_id).poll()
        return _respond(start_response, "200 OK", self._xhr_headers(environ, _JS), (frame + "\n").encode())

    def _xhr_streaming(self, environ, start_response, session_id: str) -> Iterator[bytes]:
        session = self._session_for(environ, session_id)
        start_response("200 OK", self._xhr_headers(environ, _JS))
        return session.stream(self.streaming_limit, XHR_STREAMING_PRELUDE, "%s\n")

    def _eventsource(self, environ, start_response, session_id: str) -> Iterator[bytes]:
        # sockjs-client may pick this transport (browsers, or when told to).
        session = self._session_for(environ, session_id)
        start_response("200 OK", self._xhr_headers(environ, "text/event-stream; charset=UTF-8"))
        return session.stream(self.streaming_limit, b"\r\n", "data: %s\r\n\r\n")

    def _xhr_send(self, environ, start_response, session_id: str) -> list[bytes]:
        try:
            body = environ["wsgi.input"].read(self.max_message_size + 1)
        except (OSError, ValueError) as exc:
            log.info("reading xhr_send body from %s failed: %s", _remote_addr(environ), exc)
            return self._error(start_response, "400 Bad Request", "Bad request body.")
        if len(body) > self.max_message_size:
            return self._error(start_response, "413 Request Entity Too Large", "Payload too large.")
        if not body.strip():
            return self._error(start_response, "500 Internal Server Error", "Payload expected.")
        try:
            messages = decode_client_payload(body)
        except RemoteProtocolError:
            return self._error(start_response, "500 Internal Server Error", "Broken JSON encoding.")
        session = self._sessions.get(session_id)
        if session is None:
            return self._not_found(start_response)
        session.deliver(messages)
        return _respond(start_response, "204 No Content", self._xhr_headers(environ, _TEXT))
