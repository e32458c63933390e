"""Our SockJS framing against real traffic: frames captured between kite.js 1.0.13 (sockjs-client
and its sockjs-node server) and between Go kites (sockjs-go), in tests/interop/captures/.

The captures (copied from the project's interop harness: kite.js' logging proxy and Go's
wsproxy) hold every SockJS frame both ways over websocket, xhr_polling and xhr_streaming. For
each one:

* a frame a server sent decodes (``decode_server_frame``) to what sockjs-client makes of it --
  the frame letter, and for ``a`` the JSON array of message strings -- and our encoder, given
  those messages, writes the very same bytes (``encode_messages``; the messages are ASCII, where
  both servers' JSON and ours agree byte for byte);
* a frame a client sent decodes (``decode_client_payload``) to the JSON array it holds, and our
  client encoder writes it back identically;
* every dnode message inside parses (``dnode.decode_message``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from kite.wire import dnode, sockjs

CAPTURES = Path(__file__).parent / "captures"

#: kite.js proxy lines: ``#2 S>C ws text a[...]`` (`` (masked)`` after a client's) and
#: ``#6 S>C http "<bytes as a JSON string>"``.
_KITEJS_WS = re.compile(r"^#\d+ (C>S|S>C) ws text (.*?)(?: \(masked\))?$")
_KITEJS_HTTP = re.compile(r"^#\d+ (C>S|S>C) http (\".*\")$")
#: Go wsproxy lines: ``... [conn 1] S->C WS fin=1 op=1 masked=0 len=1: o`` and ``... S->C BODY(2): "o\n"``.
_GO_WS = re.compile(r"\[conn \d+\] (C->S|S->C) WS fin=1 op=1 masked=\d len=\d+: (.*)$")
_GO_BODY = re.compile(r"\[conn \d+\] (C->S|S->C) BODY\(\d+\): (\".*\")$")


def _http_body(raw: str) -> str | None:
    """The body of one captured HTTP chunk: after the head if there is one, chunked framing removed."""
    head, sep, body = raw.partition("\r\n\r\n")
    if not sep:
        body = raw  # a later piece of a streamed body
    elif "Transfer-Encoding: chunked" not in head and not head.startswith("HTTP/"):
        return body or None
    if re.match(r"^[0-9a-f]+\r\n", body):  # one chunk: size line, data, CRLF
        size, _, rest = body.partition("\r\n")
        body = rest[: int(size, 16)]
    return body or None


def captured_frames() -> list[tuple[str, str, str]]:
    """Every SockJS frame in the captures: ``(file, "server"|"client", frame text)``."""
    frames = []
    for path in sorted(CAPTURES.glob("*.log")):
        for line in path.read_text().splitlines():
            if m := _KITEJS_WS.search(line) or _GO_WS.search(line):
                direction, text = m.groups()
            elif m := _KITEJS_HTTP.search(line) or _GO_BODY.search(line):
                direction, raw = m.groups()
                text = _http_body(json.loads(raw)) or ""
                if not text or text.startswith(("HTTP/", "GET ", "POST ")):
                    continue
                if direction.startswith("S") and text.startswith("h" * 100):  # xhr_streaming's prelude
                    continue
            else:
                continue
            side = "server" if direction in ("S>C", "S->C") else "client"
            if text.startswith("{"):
                continue  # raw websocket (/kite/websocket): dnode without SockJS framing
            frames.append((path.name, side, text))
    return frames


FRAMES = captured_frames()


def test_the_captures_cover_every_frame_kind() -> None:
    server = {text.rstrip("\n")[0] for _, side, text in FRAMES if side == "server"}
    assert {"o", "h", "a"} <= server
    assert any(side == "client" for _, side, _ in FRAMES)
    assert {name for name, _, _ in FRAMES} >= {"kitejs-sockjs-server.log", "go-websocket.log", "go-xhr.log"}


@pytest.mark.parametrize("name, text", [(n, t) for n, s, t in FRAMES if s == "server"])
def test_server_frames_decode_and_encode_back_identically(name: str, text: str) -> None:
    kind, payload = sockjs.decode_server_frame(text)
    frame = text[:-1] if text.endswith("\n") else text
    letter = frame[0]
    if letter == "o":
        assert kind == sockjs.KIND_OPEN
    elif letter == "h":
        assert kind == sockjs.KIND_HEARTBEAT
    elif letter == "a":
        assert kind == sockjs.KIND_MESSAGES and payload == json.loads(frame[1:])  # sockjs-client's reading
        assert sockjs.encode_messages(payload) == frame
        for message in payload:
            dnode.decode_message(message)
    elif letter == "c":
        assert kind == sockjs.KIND_CLOSE and list(payload) == json.loads(frame[1:])
        assert sockjs.encode_close(*payload) == frame
    else:
        pytest.fail(f"unexpected frame {frame[:40]!r} in {name}")


@pytest.mark.parametrize("name, text", [(n, t) for n, s, t in FRAMES if s == "client"])
def test_client_frames_decode_and_encode_back_identically(name: str, text: str) -> None:
    messages = sockjs.decode_client_payload(text)
    assert messages == json.loads(text)
    assert sockjs.encode_client_payload(messages) == text
    for message in messages:
        dnode.decode_message(message)
