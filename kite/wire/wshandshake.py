"""The client side of the WebSocket opening handshake (RFC 6455 §4.1), as pure code.

:func:`build_request` makes the HTTP upgrade request for a fresh
``Sec-WebSocket-Key``; :func:`split_head` finds the end of the response head in
the bytes read so far; :func:`parse_head` and :func:`check_accepted` read the
answer. A refused or malformed upgrade raises :class:`HandshakeError` with the
status, headers and (the start of) the body. The socket side is
:mod:`kite.transport.wsclient`.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping

#: Cap on a rejected handshake's response body we keep for the error message.
MAX_REJECT_BODY = 64 * 1024
#: Largest HTTP head we accept in a handshake response.
MAX_HANDSHAKE_HEAD = 64 * 1024
#: RFC 6455 §1.3: appended to the key before hashing it into Sec-WebSocket-Accept.
_ACCEPT_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

#: Extra request headers: a mapping or ``(name, value)`` pairs, as text or bytes.
Headers = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
#: Response headers as parsed: lower-cased names, stripped values.
HeaderList = list[tuple[bytes, bytes]]


class HandshakeError(ConnectionError):
    """The server did not accept the WebSocket upgrade.

    ``status_code`` is the HTTP status it answered (``None`` when the exchange
    broke before a status line), ``headers`` and ``body`` what came with it.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        headers: HeaderList | None = None,
        body: bytes = b"",
    ):
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or []
        self.body = body


def new_key() -> bytes:
    """A fresh random ``Sec-WebSocket-Key`` (16 bytes, base64)."""
    return base64.b64encode(os.urandom(16))


def accept_value(key: bytes) -> bytes:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``key``."""
    return base64.b64encode(hashlib.sha1(key + _ACCEPT_GUID).digest())


def _text(value: str | bytes) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _header_lines(headers: Headers | None) -> list[str]:
    if not headers:
        return []
    items: Iterable[tuple[str | bytes, str | bytes]] = headers.items() if isinstance(headers, Mapping) else headers
    lines = []
    for name, value in items:
        name_s, value_s = _text(name), _text(value)
        if any(c in name_s + value_s for c in "\r\n"):
            raise ValueError(f"header {name_s!r} contains a line break")
        lines.append(f"{name_s}: {value_s}\r\n")
    return lines


def build_request(host_header: str, target: str, key: bytes, headers: Headers | None = None) -> bytes:
    """The upgrade request for ``target`` on ``host_header`` with ``key`` and extra ``headers``.

    Raises :class:`ValueError` for a header holding a line break.
    """
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host_header}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key.decode()}\r\nSec-WebSocket-Version: 13\r\n"
        + "".join(_header_lines(headers))
        + "\r\n"
    )
    return request.encode("latin-1")


def split_head(data: bytes, url: str) -> tuple[bytes, bytes] | None:
    """``(head, bytes after it)`` once ``data`` holds a whole response head, else ``None``.

    Raises :class:`HandshakeError` when the head grows past :data:`MAX_HANDSHAKE_HEAD`.
    """
    head, sep, rest = data.partition(b"\r\n\r\n")
    if sep:
        return head, rest
    if len(data) > MAX_HANDSHAKE_HEAD:
        raise HandshakeError(f"handshake response from {url} is too long")
    return None


def parse_head(head: bytes, url: str) -> tuple[int, HeaderList]:
    """The status code and headers of a response head (without its blank line)."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not (parts[1].isdigit() and len(parts[1]) == 3):
        raise HandshakeError(f"bad WebSocket handshake response from {url}: {lines[0][:80]!r}")
    headers = []
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise HandshakeError(f"bad header line in the handshake response from {url}: {line[:80]!r}")
        headers.append((name.strip().lower(), value.strip()))
    return int(parts[1]), headers


def reject_body_length(headers: HeaderList) -> int:
    """How much of a refused upgrade's body to read: its Content-Length, at most :data:`MAX_REJECT_BODY`."""
    length = next((v for k, v in headers if k == b"content-length"), None)
    if length is None or not length.isdigit():
        return 0
    # More digits than the cap has is more than the cap (and int() refuses 4300+ digits).
    return MAX_REJECT_BODY if len(length) > len(str(MAX_REJECT_BODY)) else min(int(length), MAX_REJECT_BODY)


def check_accepted(headers: HeaderList, key: bytes, url: str) -> None:
    """Check a 101 answer to ``key``: the upgrade headers, the accept value, no extension we did not offer."""
    fields = dict(headers)
    if (
        fields.get(b"upgrade", b"").lower() != b"websocket"
        or b"upgrade" not in fields.get(b"connection", b"").lower()
        or fields.get(b"sec-websocket-accept") != accept_value(key)
    ):
        raise HandshakeError(f"bad WebSocket handshake response from {url}: missing or wrong upgrade headers", 101)
    if fields.get(b"sec-websocket-extensions"):
        raise HandshakeError(f"server at {url} chose an extension we did not offer", 101)
