"""The client side of the WebSocket opening handshake (RFC 6455 §4.1), on a connected socket.

Sends the HTTP upgrade request, reads the response head, checks
``Sec-WebSocket-Accept``, and returns the bytes that arrived after the head
(frames a server may send right away). A refused upgrade raises
:class:`HandshakeError` with the status, headers and (the start of) the body.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

#: Cap on a rejected handshake's response body we keep for the error message.
MAX_REJECT_BODY = 64 * 1024
#: Largest HTTP head we accept in a handshake response.
MAX_HANDSHAKE_HEAD = 64 * 1024
#: RFC 6455 §1.3: appended to the key before hashing it into Sec-WebSocket-Accept.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#: Bytes asked for per socket read during the handshake.
READ_SIZE = 64 * 1024


class HandshakeError(ConnectionError):
    """The server did not accept the WebSocket upgrade.

    ``status_code`` is the HTTP status it answered (``None`` when the exchange
    broke before a status line), ``headers`` and ``body`` what came with it.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ):
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or []
        self.body = body


def _header_lines(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> list[str]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    lines = []
    for name, value in items:
        name_s = name.decode("latin-1") if isinstance(name, bytes) else str(name)
        value_s = value.decode("latin-1") if isinstance(value, bytes) else str(value)
        if any(c in name_s + value_s for c in "\r\n"):
            raise ValueError(f"header {name_s!r} contains a line break")
        lines.append(f"{name_s}: {value_s}\r\n")
    return lines


def _read_head(sock: Any, url: str) -> tuple[bytes, bytes]:
    """Read an HTTP response head; return ``(head, bytes after it)``."""
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HANDSHAKE_HEAD:
            raise HandshakeError(f"handshake response from {url} is too long")
        try:
            chunk = sock.recv(READ_SIZE)
        except TimeoutError:
            raise
        except OSError as exc:
            raise HandshakeError(f"WebSocket handshake with {url} failed: {exc}") from exc
        if not chunk:
            raise HandshakeError(f"connection closed during WebSocket handshake with {url}")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    return head, rest


def _parse_head(head: bytes, url: str) -> tuple[int, list[tuple[bytes, bytes]]]:
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise HandshakeError(f"bad WebSocket handshake response from {url}: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HandshakeError(f"bad header line in the handshake response from {url}: {line[:80]!r}")
        headers.append((name.strip().lower(), value.strip()))
    return int(parts[1]), headers


def _read_reject_body(sock: Any, headers: list[tuple[bytes, bytes]], body: bytes) -> bytes:
    """What came with a refused upgrade, up to its Content-Length and at most MAX_REJECT_BODY."""
    length = next((v for k, v in headers if k == b"content-length"), None)
    want = min(int(length), MAX_REJECT_BODY) if length is not None and length.isdigit() else 0
    while len(body) < want:
        try:
            chunk = sock.recv(READ_SIZE)
        except OSError:
            break
        if not chunk:
            break
        body += chunk
    return body[:MAX_REJECT_BODY]


def client_handshake(sock: Any, host_header: str, target: str, headers: Any, url: str) -> bytes:
    """Do the HTTP upgrade; return the bytes that came after the 101 head (early frames)."""
    key = base64.b64encode(os.urandom(16))
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
        + "".join(_header_lines(headers))
        + "\r\n"
    )
    sock.sendall(request.encode("latin-1"))
    head, rest = _read_head(sock, url)
    status, response_headers = _parse_head(head, url)
    if status != 101:
        body = _read_reject_body(sock, response_headers, rest)
        raise HandshakeError(f"WebSocket upgrade to {url} rejected: HTTP {status}", status, response_headers, body)
    fields = dict(response_headers)
    expected = base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())
    if (
        fields.get(b"upgrade", b"").lower() != b"websocket"
        or b"upgrade" not in fields.get(b"connection", b"").lower()
        or fields.get(b"sec-websocket-accept") != expected
    ):
        raise HandshakeError(f"bad WebSocket handshake response from {url}: missing or wrong upgrade headers", 101)
    if fields.get(b"sec-websocket-extensions"):
        raise HandshakeError(f"server at {url} chose an extension we did not offer", 101)
    return rest
