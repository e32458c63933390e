"""The SockJS server: a pure WSGI application (PROTOCOL.md §1.1–§1.3, §1.5).

:class:`SockJSServer` serves, under its prefix (``/kite``), the greeting,
``/info``, the SockJS-framed WebSocket ``/{server}/{session}/websocket``, the
raw ``/websocket`` endpoint kite.js' ``ws`` clients use, the XHR polling and
streaming transports, and EventSource. Each new session is handed to ``on_session`` -- the kite
runtime's entry point -- as a :class:`~kite.transport.session.Session`.

The sessions themselves (and how they coalesce sends into one frame) are in
:mod:`kite.transport.sockjs.sessions`.

Run it under gevent's WSGI server with gevent-websocket's handler
(:func:`kite.transport.wsgi.make_server`) or gunicorn's ``kite.server.GeventKiteWorker``.
A peer's bad input never kills the server: every greenlet catches and logs.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time
from collections.abc import Callable, Iterable, Iterator
from email.utils import formatdate
from typing import TYPE_CHECKING, Any

import gevent

from kite.errors import RemoteProtocolError
from kite.transport import websocket
from kite.transport.session import MAX_SEND_BACKLOG, Session
from kite.wire.sockjs import GO_AWAY, decode_client_payload

from .sessions import WebSocketSession, XhrSession

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

log = logging.getLogger("kite.sockjs")

#: Go kites send ``h`` every 10 s, not sockjs' default 25 s (PROTOCOL.md §1.3).
HEARTBEAT_INTERVAL = 10.0
#: How long a polling session lives with no poll attached (sockjs-go 2016 default).
DISCONNECT_DELAY = 5.0
#: Heartbeat intervals a WebSocket peer may stay silent (not even a pong to our pings) before
#: its session is dropped as dead: a stopped or vanished peer sends no FIN.
DEAD_PEER_HEARTBEATS = 3
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


def _respond(
    start_response: StartResponse, status: str, headers: list[tuple[str, str]], body: bytes = b""
) -> list[bytes]:
    if not status.startswith("204"):
        headers = [*headers, ("Content-Length", str(len(body)))]
    start_response(status, headers)
    return [body] if body else []


class SockJSServer:
    """A SockJS endpoint as a WSGI application, for every path under ``prefix``.

    ``on_session(session)`` is called with a :class:`~kite.transport.session.Session` for
    every new session; it should read until ``recv()`` returns ``None`` and
    return. Afterwards the session is closed with ``c[3000,"Go away!"]`` if still
    open. WebSocket sessions run it in the request's greenlet; XHR sessions in a
    greenlet of their own.

    ``heartbeat_interval``: seconds between ``h`` frames; ``disconnect_delay``:
    seconds a polling session survives with no poll attached;
    ``streaming_limit``: bytes per xhr_streaming response; ``max_message_size``:
    largest WebSocket message and ``xhr_send`` body accepted; ``dead_peer_timeout``: seconds
    a WebSocket peer may send nothing, not even a pong to the pings we send it when it is
    silent, before its session is dropped (default :data:`DEAD_PEER_HEARTBEATS` heartbeats;
    0: never); ``max_send_backlog``: characters a session may hold queued for a peer that
    does not read before it is closed.
    """

    def __init__(
        self,
        prefix: str = "/kite",
        on_session: Callable[[Session], Any] | None = None,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        disconnect_delay: float = DISCONNECT_DELAY,
        streaming_limit: int = STREAMING_LIMIT,
        max_message_size: int = websocket.MAX_MESSAGE_SIZE,
        dead_peer_timeout: float | None = None,
        max_send_backlog: int = MAX_SEND_BACKLOG,
    ):
        self.prefix = prefix.rstrip("/")
        self.on_session = on_session
        self.heartbeat_interval = heartbeat_interval
        self.disconnect_delay = disconnect_delay
        self.streaming_limit = streaming_limit
        self.max_message_size = max_message_size
        self.dead_peer_timeout = (
            DEAD_PEER_HEARTBEATS * heartbeat_interval if dead_peer_timeout is None else dead_peer_timeout
        )
        self.max_send_backlog = max_send_backlog
        self._sessions: dict[str, XhrSession] = {}  # XHR sessions by id
        self._websocket_sessions: set[WebSocketSession] = set()

    def close(self) -> None:
        """Close every live session (for shutdown)."""
        for session in [*self._sessions.values(), *self._websocket_sessions]:
            session.close()

    # -- WSGI ----------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
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
                handler: Callable[..., Iterable[bytes]] = getattr(self, name)
                return handler(environ, start_response, *match.groups())
            except Exception:
                log.exception("SockJS %s %s failed", method, path)
                return self._error(start_response, "500 Internal Server Error", "Internal Server Error")
        if allowed:
            return _respond(start_response, "405 Method Not Allowed", [("Allow", ", ".join(allowed))])
        return self._not_found(start_response)

    @staticmethod
    def _not_found(start_response: StartResponse) -> list[bytes]:
        return SockJSServer._error(start_response, "404 Not Found", "404 page not found")

    @staticmethod
    def _error(start_response: StartResponse, status: str, text: str) -> list[bytes]:
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

    def _greeting(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        headers = [("Content-Type", "text/plain;charset=UTF-8")]
        return _respond(start_response, "200 OK", headers, b"Welcome to SockJS!\n")

    def _info(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        info = {"websocket": True, "cookie_needed": False, "origins": ["*:*"], "entropy": secrets.randbelow(2**31)}
        body = json.dumps(info, separators=(",", ":")).encode()
        headers = [*_cors(environ), _NO_CACHE, ("Content-Type", "application/json; charset=UTF-8")]
        return _respond(start_response, "200 OK", headers, body)

    def _info_options(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        headers = [*_cors(environ), *_cache_for(), ("Access-Control-Allow-Methods", "OPTIONS, GET")]
        return _respond(start_response, "204 No Content", headers)

    def _xhr_options(self, environ: dict[str, Any], start_response: StartResponse, session_id: str) -> list[bytes]:
        headers = [*_cors(environ), *_cache_for(), ("Access-Control-Allow-Methods", "OPTIONS, POST")]
        return _respond(start_response, "204 No Content", headers)

    # -- WebSocket transports -----------------------------------------------------------------

    def _raw_websocket(self, environ: dict[str, Any], start_response: StartResponse) -> list[bytes]:
        return self._serve_websocket(environ, start_response, sockjs=False, session_id="")

    def _sockjs_websocket(self, environ: dict[str, Any], start_response: StartResponse, session_id: str) -> list[bytes]:
        return self._serve_websocket(environ, start_response, sockjs=True, session_id=session_id)

    def _serve_websocket(
        self, environ: dict[str, Any], start_response: StartResponse, *, sockjs: bool, session_id: str
    ) -> list[bytes]:
        ws = websocket.WebSocket.from_environ(environ, max_message_size=self.max_message_size)
        if ws is None:
            return self._error(start_response, "400 Bad Request", 'Can "Upgrade" only to "WebSocket".')
        session = WebSocketSession(
            ws,
            sockjs=sockjs,
            heartbeat_interval=self.heartbeat_interval,
            session_id=session_id,
            dead_peer_timeout=self.dead_peer_timeout,
        )
        session.max_backlog = self.max_send_backlog
        session.query = environ.get("QUERY_STRING", "")
        self._websocket_sessions.add(session)
        try:
            session.start()
            self._run_session(session)
        finally:
            self._websocket_sessions.discard(session)
            session.finish()
        return []

    # -- XHR transports ---------------------------------------------------------------------

    def _session_for(self, environ: dict[str, Any], session_id: str) -> XhrSession:
        session = self._sessions.get(session_id)
        if session is None:
            session = XhrSession(self, session_id, _remote_addr(environ))
            session.max_backlog = self.max_send_backlog
            session.query = environ.get("QUERY_STRING", "")
            self._sessions[session_id] = session
            gevent.spawn(self._run_session, session)
        return session

    def _forget(self, session: XhrSession) -> None:
        if self._sessions.get(session.id) is session:
            del self._sessions[session.id]

    def _xhr_headers(self, environ: dict[str, Any], content_type: str) -> list[tuple[str, str]]:
        return [*_cors(environ), _NO_CACHE, ("Content-Type", content_type)]

    def _xhr_poll(self, environ: dict[str, Any], start_response: StartResponse, session_id: str) -> list[bytes]:
        frame = self._session_for(environ, session_id).poll()
        return _respond(start_response, "200 OK", self._xhr_headers(environ, _JS), (frame + "\n").encode())

    def _xhr_streaming(
        self, environ: dict[str, Any], start_response: StartResponse, session_id: str
    ) -> Iterator[bytes]:
        session = self._session_for(environ, session_id)
        start_response("200 OK", self._xhr_headers(environ, _JS))
        return session.stream(self.streaming_limit, XHR_STREAMING_PRELUDE, "%s\n")

    def _eventsource(self, environ: dict[str, Any], start_response: StartResponse, session_id: str) -> Iterator[bytes]:
        # sockjs-client may pick this transport (browsers, or when told to).
        session = self._session_for(environ, session_id)
        start_response("200 OK", self._xhr_headers(environ, "text/event-stream; charset=UTF-8"))
        return session.stream(self.streaming_limit, b"\r\n", "data: %s\r\n\r\n")

    def _xhr_send(self, environ: dict[str, Any], start_response: StartResponse, session_id: str) -> list[bytes]:
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
