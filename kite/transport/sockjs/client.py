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

import contextlib
import logging
import random
import secrets
import ssl
from collections.abc import Iterator, Mapping
from urllib.parse import urlsplit, urlunsplit

import gevent

from kite.transport import wsclient
from kite.transport.session import Session

from .dialsessions import DEAD_PEER_TIMEOUT, DialError, DialTimeoutError, WebSocketClientSession, XhrClientSession

log = logging.getLogger("kite.sockjs")

__all__ = ["DEAD_PEER_TIMEOUT", "DialError", "DialTimeoutError", "dial", "dial_sockjs_websocket", "tls_context"]

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
    url: str,
    sockjs: bool,
    timeout: float | None,
    headers: dict[str, str],
    verify: bool | str = True,
    dead_peer_timeout: float = DEAD_PEER_TIMEOUT,
) -> Session:
    if sockjs:
        ws_url, origin = _ws_urls(url)
        if not any(name.lower() == "origin" for name in headers):
            headers = {"Origin": origin, **headers}
    else:
        ws_url = url
    secure = urlsplit(ws_url).scheme.lower() == "wss"
    context = tls_context(verify) if secure and verify is not True else None
    ws = wsclient.connect(ws_url, headers=headers, timeout=timeout, ssl_context=context)
    return WebSocketClientSession(ws, sockjs=sockjs, dead_peer_timeout=dead_peer_timeout)


def _dial_xhr(
    url: str,
    streaming: bool,
    timeout: float | None,
    headers: dict[str, str],
    verify: bool | str = True,
    dead_peer_timeout: float = DEAD_PEER_TIMEOUT,
) -> Session:
    parts = urlsplit(url)
    session_path = f"{parts.path.rstrip('/')}/{random.randint(100, 999)}/{secrets.token_hex(10)}"
    session_url = urlunsplit((parts.scheme, parts.netloc, session_path, "", ""))
    session = XhrClientSession(session_url, parts.query, streaming, timeout, headers, verify, dead_peer_timeout)
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
    dead_peer_timeout: float = DEAD_PEER_TIMEOUT,
) -> Session:
    """Connect to the kite at ``url`` and return the open :class:`~kite.transport.session.Session`.

    ``url`` is the SockJS base URL, normally ``http(s)://host:port/kite``; a
    ``ws://``/``wss://`` URL dials a raw WebSocket instead. ``transport`` is
    ``"websocket"`` (default), ``"xhr_polling"`` (alias ``"xhr"``),
    ``"xhr_streaming"`` or ``"auto"``. ``timeout`` (seconds) bounds connecting
    and the handshake. ``headers`` are added to the handshake / HTTP requests.
    ``verify`` checks ``https``/``wss`` certificates as ``requests`` does: ``True``
    against the system CAs, a path against that CA bundle, ``False`` not at all.
    ``dead_peer_timeout``: seconds without anything from the server (message, heartbeat,
    pong) after which the session ends as if the server had closed it; 0 never.

    Raises :class:`DialError` (a :class:`ConnectionError`;
    :class:`DialTimeoutError` on timeout) naming the URL.
    """
    try:
        kind = _TRANSPORTS[transport.lower()]
    except KeyError:
        raise ValueError(f"unknown transport {transport!r}; use one of {sorted(_TRANSPORTS)}") from None
    extra = dict(headers or {})
    scheme = urlsplit(url).scheme.lower()
    with _dial_errors(url, transport):
        if scheme in ("ws", "wss"):
            return _dial_websocket(url, False, timeout, extra, verify, dead_peer_timeout)
        if scheme not in ("http", "https"):
            raise DialError(f"invalid scheme in url {url!r}", url)
        if kind == "websocket":
            return _dial_websocket(url, True, timeout, extra, verify, dead_peer_timeout)
        if kind == "auto":
            try:
                return _dial_websocket(url, True, timeout, extra, verify, dead_peer_timeout)
            except wsclient.HandshakeError as exc:
                if exc.status_code is None or exc.status_code == 101:
                    raise
                log.info("WebSocket to %s refused (HTTP %s); falling back to XHR polling", url, exc.status_code)
            kind = "xhr_polling"
        return _dial_xhr(url, kind == "xhr_streaming", timeout, extra, verify, dead_peer_timeout)


def dial_sockjs_websocket(ws_url: str, timeout: float | None = None, verify: bool | str = True) -> Session:
    """A SockJS-framed WebSocket dialed at exactly ``ws_url``
    (``ws(s)://host/prefix/{server}/{session}/websocket[?query]``, nothing appended), with
    ``Origin: http(s)://<host>``: what ``kite.tunnel`` dials for a tunnel proxy (PROTOCOL.md §8.5).

    Raises :class:`DialError` as :func:`dial` does; the URL in its message stops before the
    query string, which may carry a credential.
    """
    parts = urlsplit(ws_url)
    scheme = parts.scheme.lower()
    shown = urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    with _dial_errors(shown, "websocket"):
        if scheme not in ("ws", "wss"):
            raise DialError(f"invalid scheme in url {shown!r}: expected ws or wss", shown)
        origin = f"{'https' if scheme == 'wss' else 'http'}://{parts.netloc}"
        context = tls_context(verify) if scheme == "wss" and verify is not True else None
        ws = wsclient.connect(ws_url, headers={"Origin": origin}, timeout=timeout, ssl_context=context)
        return WebSocketClientSession(ws, sockjs=True)


@contextlib.contextmanager
def _dial_errors(url: str, transport: str) -> Iterator[None]:
    """Turn what dialing ``url`` raises into :class:`DialError` / :class:`DialTimeoutError`."""
    try:
        yield
    except DialError:
        raise
    except TimeoutError as exc:
        raise DialTimeoutError(f"dialing {url} ({transport}) timed out: {exc}", url) from exc
    except wsclient.HandshakeError as exc:
        raise DialError(f"dialing {url} ({transport}) failed: {exc}", url, exc.status_code) from exc
    except Exception as exc:
        if _is_requests_timeout(exc):
            raise DialTimeoutError(f"dialing {url} ({transport}) timed out: {exc}", url) from exc
        raise DialError(f"dialing {url} ({transport}) failed: {exc}", url) from exc


def _is_requests_timeout(exc: Exception) -> bool:
    import requests

    return isinstance(exc, requests.Timeout)
