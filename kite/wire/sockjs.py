"""SockJS frames, built and parsed without any I/O (PROTOCOL.md §1.2).

Server → client frames:

* ``o`` -- the session is open (always the first frame);
* ``h`` -- heartbeat;
* ``a[...]`` -- a JSON array of strings, each one application message;
* ``c[code,"reason"]`` -- the session is closed;
* ``m"..."`` -- a single message (non-standard; the Go client accepts it).

Client → server payloads are a JSON array of strings, on WebSocket one per text
message and on ``xhr_send`` one per request body.

Every parser here either returns a value or raises
:class:`~kite.errors.RemoteProtocolError`; no other exception escapes, whatever
the input.
"""

from __future__ import annotations

from typing import Any

from kite.errors import RemoteProtocolError

from . import jsoncodec

#: Frame sent once when a session opens.
OPEN = "o"
#: Heartbeat frame.
HEARTBEAT = "h"

#: Kinds returned by :func:`decode_server_frame`.
KIND_OPEN = "open"
KIND_HEARTBEAT = "heartbeat"
KIND_MESSAGES = "messages"
KIND_CLOSE = "close"

#: How a Go kite closes every session it serves (``kite.go`` ``sockjsHandler``).
GO_AWAY = (3000, "Go away!")
#: Sent to a second receiver that attaches while one is attached (sockjs-go ``session.go``).
ANOTHER_CONNECTION = (2010, "Another connection still open")

# JSON decoding errors we turn into RemoteProtocolError.
_JSON_ERRORS = (*jsoncodec.DECODE_ERRORS, TypeError)


#: Characters of messages one frame (or ``xhr_send`` body) carries at most, unless a single
#: message is longer: a burst of large messages then leaves as several frames, each well
#: under any peer's message limit (ours: 16 MiB), instead of one that the peer refuses.
BATCH_LIMIT = 1024 * 1024


def first_batch(messages: list[str], limit: int = BATCH_LIMIT) -> int:
    """How many of ``messages``, from the first, go in one frame: as many as fit in ``limit``
    characters, and always at least one."""
    size = 0
    for count, message in enumerate(messages):
        size += len(message)
        if size > limit and count:
            return count
    return len(messages)


def batches(messages: list[str], limit: int = BATCH_LIMIT) -> list[list[str]]:
    """``messages`` cut into consecutive frames of :func:`first_batch` each (one list when they fit)."""
    if len(messages) == 1 or (messages and first_batch(messages, limit) == len(messages)):
        return [messages]  # the usual case, on every flush: no copies
    out = []
    while messages:
        n = first_batch(messages, limit)
        out.append(messages[:n])
        messages = messages[n:]
    return out


def encode_messages(messages: list[str]) -> str:
    """The ``a[...]`` frame carrying ``messages`` in order.

    Non-ASCII characters are ``\\u``-escaped, so the frame is always valid UTF-8
    even for strings holding lone surrogates.
    """
    return "a" + jsoncodec.dumps(list(messages))


def encode_close(code: int, reason: str) -> str:
    """The close frame, e.g. ``c[3000,"Go away!"]``."""
    return "c" + jsoncodec.dumps([int(code), str(reason)])


def encode_client_payload(messages: list[str]) -> str:
    """What a client sends: the JSON array ``["m1","m2"]``."""
    return jsoncodec.dumps(list(messages))


def _to_text(data: str | bytes | bytearray | memoryview) -> str:
    if isinstance(data, str):
        return data
    if isinstance(data, (bytes, bytearray, memoryview)):
        try:
            return bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise RemoteProtocolError(f"SockJS frame is not valid UTF-8: {exc}") from None
    raise RemoteProtocolError(f"SockJS frame must be text, not {type(data).__name__}")


def _loads(text: str, what: str) -> Any:
    try:
        return jsoncodec.loads(text)
    except _JSON_ERRORS as exc:
        raise RemoteProtocolError(f"broken JSON in {what}: {exc}") from None


def _string_list(value: Any, what: str) -> list[str]:
    if not isinstance(value, list):
        raise RemoteProtocolError(f"{what} must be a JSON array of strings, got {type(value).__name__}")
    for item in value:
        if not isinstance(item, str):
            raise RemoteProtocolError(f"{what} must hold only strings, got {type(item).__name__}")
    return value


def decode_client_payload(text: str | bytes) -> list[str]:
    """Parse what a client sent: a JSON array of strings, one per message.

    Like the Go server (sockjs-go ``websocket.go``), a bare JSON string is *not*
    accepted. An empty array is valid and carries no message.

    Raises :class:`RemoteProtocolError` on anything else, including an empty
    payload, broken JSON, invalid UTF-8 and non-string elements.
    """
    text = _to_text(text)
    if not text.strip():
        raise RemoteProtocolError("empty SockJS payload")
    return _string_list(_loads(text, "SockJS payload"), "SockJS payload")


def decode_server_frame(text: str | bytes) -> tuple[str, Any]:
    """Parse one frame a server sent; returns ``(kind, payload)``.

    ========================  =========================================
    frame                     result
    ========================  =========================================
    ``o``                     ``("open", None)``
    ``h``                     ``("heartbeat", None)``
    ``a["m1","m2"]``          ``("messages", ["m1", "m2"])``
    ``m"m1"``                 ``("messages", ["m1"])`` (non-standard)
    ``c[3000,"Go away!"]``    ``("close", (3000, "Go away!"))``
    ========================  =========================================

    One trailing newline (XHR transports end each frame with ``\\n``) is ignored.
    Anything else raises :class:`RemoteProtocolError`.
    """
    text = _to_text(text)
    if text.endswith("\n"):
        text = text[:-1]
        if text.endswith("\r"):
            text = text[:-1]
    if not text:
        raise RemoteProtocolError("empty SockJS frame")
    kind, body = text[0], text[1:]
    if kind == OPEN and not body:
        return KIND_OPEN, None
    if kind == HEARTBEAT and not body:
        return KIND_HEARTBEAT, None
    if kind == "a":
        return KIND_MESSAGES, _string_list(_loads(body, "a frame"), "a frame")
    if kind == "m":
        message = _loads(body, "m frame")
        if not isinstance(message, str):
            raise RemoteProtocolError("m frame must hold a JSON string")
        return KIND_MESSAGES, [message]
    if kind == "c":
        value = _loads(body, "c frame")
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], int)
            or isinstance(value[0], bool)
            or not isinstance(value[1], str)
        ):
            raise RemoteProtocolError(f"c frame must be [code, reason], got {body[:80]!r}")
        return KIND_CLOSE, (value[0], value[1])
    raise RemoteProtocolError(f"unknown SockJS frame {text[:80]!r}")
