"""Dialing a WebSocket: TCP (and TLS) on gevent sockets, then the opening handshake.

:func:`connect` returns a client-side :class:`~kite.transport.websocket.WebSocket`.
The handshake's request and the checks of its answer are pure code in
:mod:`kite.wire.wshandshake`; this module only moves its bytes.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl

from kite.wire import wshandshake
from kite.wire.wshandshake import HandshakeError, Headers

from .websocket import MAX_MESSAGE_SIZE, WebSocket, set_nodelay

#: Bytes asked for per socket read during the handshake.
READ_SIZE = 64 * 1024

__all__ = ["HandshakeError", "client_handshake", "connect"]


def _wrap_client_ssl(sock: Any, ssl_context: Any, hostname: str) -> Any:
    """TLS over a gevent socket with gevent's SSLSocket, whatever kind of context we got.

    (``gevent.ssl.create_default_context()`` returns a stdlib context in an
    unpatched process; its own ``wrap_socket`` would block the whole process.)
    """
    ctx = ssl_context if ssl_context is not None else gssl.create_default_context()
    return gssl.SSLSocket(sock=sock, server_hostname=hostname, _context=ctx)


def _read_head(sock: Any, url: str) -> tuple[bytes, bytes]:
    """Read an HTTP response head; return ``(head, bytes after it)``."""
    data = b""
    while (split := wshandshake.split_head(data, url)) is None:
        try:
            chunk = sock.recv(READ_SIZE)
        except TimeoutError:
            raise
        except OSError as exc:
            raise HandshakeError(f"WebSocket handshake with {url} failed: {exc}") from exc
        if not chunk:
            raise HandshakeError(f"connection closed during WebSocket handshake with {url}")
        data += chunk
    return split


def _read_reject_body(sock: Any, want: int, body: bytes) -> bytes:
    """What came with a refused upgrade, up to ``want`` bytes (or the end of the connection)."""
    while len(body) < want:
        try:
            chunk = sock.recv(READ_SIZE)
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    return body[: wshandshake.MAX_REJECT_BODY]


def client_handshake(sock: Any, host_header: str, target: str, headers: Headers | None, url: str) -> bytes:
    """Do the HTTP upgrade on a connected socket; return the bytes that came after the 101 head."""
    key = wshandshake.new_key()
    sock.sendall(wshandshake.build_request(host_header, target, key, headers))
    head, rest = _read_head(sock, url)
    status, response_headers = wshandshake.parse_head(head, url)
    if status != 101:
        body = _read_reject_body(sock, wshandshake.reject_body_length(response_headers), rest)
        raise HandshakeError(f"WebSocket upgrade to {url} rejected: HTTP {status}", status, response_headers, body)
    wshandshake.check_accepted(response_headers, key, url)
    return rest


def connect(
    url: str,
    headers: Headers | None = None,
    timeout: float | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
    ssl_context: Any = None,
) -> WebSocket:
    """Open a client WebSocket to ``url`` (``ws://``, ``wss://``; ``http(s)://`` mean the same).

    ``headers`` are extra request headers (e.g. ``Origin``). ``timeout`` bounds
    the TCP connect, the TLS handshake and the WebSocket handshake together;
    when it expires :class:`TimeoutError` is raised. A refused upgrade raises
    :class:`HandshakeError` (its ``status_code`` tells what the server said);
    network failures raise :class:`OSError`.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("ws", "http"):
        secure = False
    elif scheme in ("wss", "https"):
        secure = True
    else:
        raise ValueError(f"invalid scheme in WebSocket url {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in WebSocket url {url!r}")
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    sock = None
    try:
        with gevent.Timeout(timeout, TimeoutError(f"WebSocket connect to {url} timed out after {timeout} s")):
            sock = gsocket.create_connection((host, port))
            set_nodelay(sock)
            if secure:
                sock = _wrap_client_ssl(sock, ssl_context, host)
            early = client_handshake(sock, host_header, target, headers, url)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    return WebSocket(
        sock,
        client=True,
        owns_socket=True,
        max_message_size=max_message_size,
        remote_addr=f"{host}:{port}",
        received=early,
    )
