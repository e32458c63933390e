"""Differential tests: our RFC 6455 frame codec (:mod:`kite.wire.wsframes`) against wsproto's.

The same byte stream, cut the same arbitrary way, goes into our :class:`FrameDecoder` and into
``wsproto.frame_protocol.FrameProtocol``; both must accept it or both refuse it (with the same
close code), and when they accept they must deliver the same messages, control payloads and
close codes in the same order. The other way round, what :func:`encode_frame` and
:func:`encode_close` write, wsproto decodes to the messages we meant.

Deliberate differences from wsproto, each kept out of the generated streams and pinned by a test
of its own below:

* a payload length not written in the fewest bytes (126 + a length < 126, 127 + one < 65536):
  wsproto refuses it; RFC 6455 §5.2 puts the "minimal number of bytes" MUST on the sender and
  asks nothing of the receiver, and the ``ws`` library (kite.js) and gorilla (Go kites) accept it,
  so we do too;
* close code 1014 ("Bad Gateway"): IANA registered it with 1012 and 1013 (RFC 6455 §11.7 makes
  the registry the list of valid codes), wsproto only knows 1012 and 1013; we accept all three;
* message size: wsproto has no limit, we refuse a message over ``max_message_size`` with 1009
  (the differential decoder gets a limit no generated stream reaches).
"""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kite.wire.wsframes import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameDecoder,
    FrameError,
    _apply_mask_python,
    encode_close,
    encode_frame,
)

from .wsbytes import WsprotoReader, build_frame

#: Fixed, derandomized runs: the same examples every time, well within the 25 s budget.
DIFFERENTIAL = settings(
    max_examples=400,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
#: A message limit no generated stream reaches (wsproto has none; see the module docstring).
NO_LIMIT = 1 << 62
#: Close codes a peer may send (RFC 6455 §7.4, IANA), minus 1014 (see the module docstring).
VALID_CLOSE_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 3000, 3999, 4000, 4999]
#: Close codes that must be refused (1002): never valid, reserved, local-only or out of range.
INVALID_CLOSE_CODES = [0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]
#: Byte strings that are not UTF-8 (a lone continuation byte, an overlong form, a surrogate,
#: beyond U+10FFFF, a truncated sequence).
INVALID_UTF8 = [b"\x80", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe2\x82", b"\xff"]


# -- generating streams -----------------------------------------------------------------------------


@st.composite
def utf8_or_not(draw: st.DrawFn) -> bytes:
    """Text payloads: mostly valid UTF-8 (multi-byte characters included), sometimes broken."""
    text = draw(st.text(max_size=40)).encode("utf-8")
    if draw(st.integers(0, 4)) == 0:
        bad = draw(st.sampled_from(INVALID_UTF8))
        at = draw(st.integers(0, len(text)))
        text = text[:at] + bad + text[at:]
    return text


@st.composite
def close_payload(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 9))
    if kind == 0:
        return b""
    if kind == 1:
        return draw(st.binary(min_size=1, max_size=1))
    code = draw(st.sampled_from(INVALID_CLOSE_CODES if kind == 2 else VALID_CLOSE_CODES))
    reason = draw(st.sampled_from(INVALID_UTF8)) if kind == 3 else draw(st.text(max_size=20)).encode()
    return (struct.pack("!H", code) + reason)[:125]


@st.composite
def control_frame(draw: st.DrawFn) -> tuple[int, bytes]:
    """``(first byte, payload)`` of a ping, pong or close, sometimes oversized or fragmented."""
    opcode = draw(st.sampled_from([OP_PING, OP_PONG, OP_CLOSE]))
    payload = draw(close_payload()) if opcode == OP_CLOSE else draw(st.binary(max_size=20))
    fault = draw(st.integers(0, 15))
    if fault == 0:
        payload += b"\x00" * 126  # over the 125-byte control limit
    fin = 0 if fault == 1 else 0x80
    return fin | opcode, payload


@st.composite
def message_frames(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """A text or binary message, maybe fragmented (fragment borders may cut a UTF-8 character),
    maybe with control frames between its fragments."""
    opcode = draw(st.sampled_from([OP_TEXT, OP_BINARY]))
    payload = draw(utf8_or_not()) if opcode == OP_TEXT else draw(st.binary(max_size=40))
    cuts = sorted(draw(st.lists(st.integers(0, len(payload)), max_size=4)))
    pieces = [payload[a:b] for a, b in zip([0, *cuts], [*cuts, len(payload)], strict=True)]
    frames: list[tuple[int, bytes]] = []
    for i, piece in enumerate(pieces):
        fin = 0x80 if i == len(pieces) - 1 else 0
        frames.append((fin | (opcode if i == 0 else OP_CONTINUATION), piece))
        if not fin and draw(st.integers(0, 2)) == 0:
            frames.append(draw(control_frame()))
    return frames


@st.composite
def odd_frame(draw: st.DrawFn) -> list[tuple[int, bytes]]:
    """A frame with an arbitrary first byte: reserved bits, reserved opcodes, stray continuations."""
    return [(draw(st.integers(0, 255)), draw(st.binary(max_size=10)))]


@st.composite
def stream_of_frames(draw: st.DrawFn, masked: bool) -> bytes:
    """A whole byte stream as one side receives it; sometimes ends in a frame announcing a huge
    (or illegal, top bit set) payload of which only the first byte comes. (That byte matters:
    wsproto judges a data frame against the message in progress when its payload starts, we as
    soon as its header is in -- failing earlier is right, and with one byte both have judged.)"""
    items = draw(st.lists(st.one_of(message_frames(), control_frame().map(lambda f: [f]), odd_frame()), max_size=6))
    out = bytearray()
    for frames in items:
        for b0, payload in frames:
            wrong_side = draw(st.integers(0, 40)) == 0  # masked the wrong way for this side
            key = draw(st.binary(min_size=4, max_size=4))
            out += build_frame(b0, payload, masked ^ wrong_side, key)
    tail = draw(st.integers(0, 12))
    if tail == 0:
        out += build_frame(0x80 | OP_BINARY, b"\x00", masked, length=1 << 40)
    elif tail == 1:
        out += build_frame(0x80 | OP_BINARY, b"\x00", masked, length=(1 << 63) + 5)
    return bytes(out)


def chunked(stream: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(stream) + 1) for c in cuts})
    return [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True) if b > a]


# -- the two decoders, as the same outcome -----------------------------------------------------------

Outcome = tuple[list[tuple], int | None]


def ours(chunks: list[bytes], masked: bool, limit: int = NO_LIMIT) -> Outcome:
    decoder = FrameDecoder(masked=masked, max_message_size=limit)
    events: list[tuple] = []
    for chunk in chunks:
        try:
            events += decoder.receive(chunk)
        except FrameError as exc:
            return events + exc.events, exc.code
    return events, None


def wsproto_outcome(chunks: list[bytes], masked: bool) -> Outcome:
    reader = WsprotoReader(masked)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.events, reader.error


@DIFFERENTIAL
@given(data=st.data(), masked=st.booleans())
def test_both_decoders_agree_on_any_stream_cut_anyhow(data: st.DataObject, masked: bool) -> None:
    stream = data.draw(stream_of_frames(masked))
    cuts = data.draw(st.lists(st.integers(0, 1 << 16), max_size=8))
    chunks = chunked(stream, cuts)
    assert ours(chunks, masked) == wsproto_outcome(chunks, masked)


# -- the encoder, read by wsproto ----------------------------------------------------------------------


@st.composite
def outgoing(draw: st.DrawFn) -> tuple:
    kind = draw(st.sampled_from(["text", "binary", "ping", "pong", "close"]))
    if kind == "text":
        return ("text", draw(st.text(max_size=300)))
    if kind == "binary":
        return ("binary", draw(st.binary(max_size=300)))
    if kind in ("ping", "pong"):
        return (kind, draw(st.binary(max_size=125)))
    code = draw(st.sampled_from([None, 1005, *VALID_CLOSE_CODES]))
    # Long reasons of multi-byte characters: what must be cut, and where a cut can split a character.
    reason = draw(st.one_of(st.text(max_size=200), st.text(alphabet="aé€😀", min_size=30, max_size=130)))
    return ("close", code, reason)


def encode(event: tuple, mask: bool) -> bytes:
    kind = event[0]
    if kind == "close":
        return encode_close(event[1], event[2], mask)
    opcode = {"text": OP_TEXT, "binary": OP_BINARY, "ping": OP_PING, "pong": OP_PONG}[kind]
    return encode_frame(opcode, event[1].encode() if kind == "text" else event[1], mask)


@DIFFERENTIAL
@given(messages=st.lists(outgoing(), max_size=6), mask=st.booleans(), cuts=st.lists(st.integers(0, 1 << 12)))
def test_wsproto_reads_what_we_write(messages: list[tuple], mask: bool, cuts: list[int]) -> None:
    closes = [i for i, m in enumerate(messages) if m[0] == "close"]
    messages = messages[: closes[0] + 1] if closes else messages  # nothing is read after a close
    stream = b"".join(encode(m, mask) for m in messages)
    events, error = wsproto_outcome(chunked(stream, cuts), masked=mask)
    assert error is None
    assert len(events) == len(messages)
    for got, sent in zip(events, messages, strict=True):
        if sent[0] != "close":
            assert got == sent
            continue
        if sent[1] in (None, 1005):
            assert got == ("close", 1005, "")
        else:
            # The reason is cut to 123 bytes, on a character boundary (never half a character).
            assert got[:2] == ("close", sent[1]) and sent[2].startswith(got[2])
            assert len(got[2].encode()) <= 123 and (got[2] == sent[2] or len(got[2].encode()) > 119)


def test_a_long_reason_is_cut_on_a_character_boundary() -> None:
    # Regression: 61 two-byte characters plus one more cut at 123 bytes used to end in half a
    # character, and the peer failed the connection with 1007 instead of reading our close.
    frame = encode_close(1000, "é" * 70, mask=False)
    assert wsproto_outcome([frame], masked=False) == ([("close", 1000, "é" * 61)], None)


# -- the deliberate differences, pinned ----------------------------------------------------------------


@pytest.mark.parametrize("masked", [True, False])
def test_non_minimal_length_encodings_are_accepted_though_wsproto_refuses(masked: bool) -> None:
    key = b"\x01\x02\x03\x04"
    payload = b"hello"
    body = key + _apply_mask_python(payload, key) if masked else payload
    bit = 0x80 if masked else 0
    two_byte = bytes((0x80 | OP_BINARY, bit | 126)) + struct.pack("!H", 5) + body
    eight_byte = bytes((0x80 | OP_BINARY, bit | 127)) + struct.pack("!Q", 5) + body
    for stream in (two_byte, eight_byte):
        assert ours([stream], masked) == ([("binary", payload)], None)
        assert wsproto_outcome([stream], masked)[1] == 1002


def test_close_code_1014_is_valid_though_wsproto_refuses_it() -> None:
    stream = build_frame(0x80 | OP_CLOSE, struct.pack("!H", 1014), masked=False)
    assert ours([stream], masked=False) == ([("close", 1014, "")], None)
    assert wsproto_outcome([stream], masked=False)[1] == 1002


@pytest.mark.parametrize("fragments", [1, 3])
def test_a_message_over_our_limit_is_refused_with_1009_wsproto_has_no_limit(fragments: int) -> None:
    frames = [(OP_BINARY if i == 0 else OP_CONTINUATION, b"x" * 40) for i in range(fragments)]
    fins = [0] * (fragments - 1) + [0x80]
    stream = b"".join(build_frame(fin | op, p, True) for fin, (op, p) in zip(fins, frames, strict=True))
    assert ours([stream], True, limit=40 * fragments - 1)[1] == 1009
    assert ours([stream], True, limit=40 * fragments) == ([("binary", b"x" * 40 * fragments)], None)
    assert wsproto_outcome([stream], True)[1] is None
