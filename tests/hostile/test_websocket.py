"""Hostile websocket bytes (kite.wire.wsframes, kite.wire.wshandshake).

The frame decoder, fed any bytes in any chunks, returns events or raises ``FrameError`` (a
``RemoteProtocolError``); the handshake parsers read a response head or raise
``HandshakeError``, the error a refused upgrade raises. (Conformance of the frames is tested
against wsproto elsewhere; here only "nothing else escapes".)
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kite.wire import wsframes, wshandshake

from .strategies import examples, parses_or_refuses

#: Decoder limit: small, so that "too big" is reachable.
MAX_MESSAGE = 1024


@st.composite
def frame_streams(draw: st.DrawFn, masked: bool) -> bytes:
    """Frames as a peer would send them (the masking ``masked`` says), then a few bytes flipped."""
    stream = b""
    for _ in range(draw(st.integers(1, 4))):
        opcode = draw(st.sampled_from([0x0, 0x1, 0x2, 0x8, 0x9, 0xA, 0x3, 0xB]))
        payload = draw(st.one_of(st.binary(max_size=200), st.text(max_size=50).map(str.encode)))
        if opcode == 0x8 and draw(st.booleans()):
            payload = draw(st.integers(0, 5000)).to_bytes(2, "big") + payload[:100]
        frame = bytearray(wsframes.encode_frame(opcode, payload, mask=masked))
        if draw(st.booleans()):
            frame[0] &= 0x7F  # not final: a fragment
        stream += bytes(frame)
    stream = bytearray(stream)
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(stream) - 1))
        stream[i] ^= 1 << draw(st.integers(0, 7))
    return bytes(stream)


@st.composite
def chunked(draw: st.DrawFn, masked: bool) -> list[bytes]:
    data = draw(st.one_of(frame_streams(masked), st.binary(max_size=300)))
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=5)))
    return [data[i:j] for i, j in zip([0, *cuts], [*cuts, len(data)], strict=True)]


def feed(masked, chunks):
    """Feed ``chunks`` to a fresh decoder until it raises (a real connection stops there)."""
    decoder = wsframes.FrameDecoder(masked=masked, max_message_size=MAX_MESSAGE)
    events = []
    for chunk in chunks:
        events.extend(decoder.receive(chunk))
    return events


@examples(200)
@given(st.booleans().flatmap(lambda masked: st.tuples(st.just(masked), chunked(masked))))
def test_frame_decoder_returns_events_or_raises_frame_error(case):
    masked, chunks = case
    events = parses_or_refuses(feed, masked, chunks, allowed=(wsframes.FrameError,))
    for event in events or []:
        assert event[0] in (wsframes.TEXT, wsframes.BINARY, wsframes.PING, wsframes.PONG, wsframes.CLOSE)


@st.composite
def response_heads(draw: st.DrawFn) -> bytes:
    statuses = st.sampled_from([b"101", b"403", b"1" * 5000, b"", b"abc", b"0101"])
    status = draw(st.one_of(statuses, st.binary(max_size=4)))
    lines = [b"HTTP/1.1 " + status + b" Whatever"]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from([b"Upgrade", b"Connection", b"Sec-WebSocket-Accept", b"Content-Length",
                                     b"Sec-WebSocket-Extensions", b""]))
        value = draw(st.one_of(st.sampled_from([b"websocket", b"Upgrade", b"12", b"9" * 5000, b""]),
                               st.binary(max_size=10)))
        lines.append(name + draw(st.sampled_from([b": ", b":", b" "])) + value)
    return b"\r\n".join(lines) + draw(st.sampled_from([b"\r\n\r\n", b"\r\n", b""])) + draw(st.binary(max_size=8))


def read_response(data):
    """The client's reading of an upgrade answer: split, parse, then accept or refuse it."""
    split = wshandshake.split_head(data, "ws://h/")
    if split is None:
        return None
    status, headers = wshandshake.parse_head(split[0], "ws://h/")
    wshandshake.reject_body_length(headers)
    if status == 101:
        wshandshake.check_accepted(headers, b"dGhlIHNhbXBsZSBub25jZQ==", "ws://h/")
    return status


@examples(200)
@given(st.one_of(response_heads(), st.binary(max_size=200)))
def test_handshake_response_parses_or_raises_handshake_error(data):
    parses_or_refuses(read_response, data, allowed=(wshandshake.HandshakeError,))


def test_regression_a_5000_digit_status_is_refused():
    # int() refused the 5000 digits with a ValueError
    with pytest.raises(wshandshake.HandshakeError):
        wshandshake.parse_head(b"HTTP/1.1 " + b"1" * 5000 + b" OK", "ws://h/")


def test_regression_a_5000_digit_content_length_reads_the_capped_body():
    assert wshandshake.reject_body_length([(b"content-length", b"9" * 5000)]) == wshandshake.MAX_REJECT_BODY
    assert wshandshake.reject_body_length([(b"content-length", b"12")]) == 12
