"""The pure WebSocket frame codec: what it decodes is the same however the bytes arrive."""

import pytest

from kite.wire.wsframes import (
    BINARY,
    CLOSE,
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_TEXT,
    PING,
    TEXT,
    FrameDecoder,
    FrameError,
    _apply_mask_python,
    apply_mask,
    encode_close,
    encode_frame,
)

MESSAGES = ["", "x", "é" * 40, "a" * 125, "b" * 126, "c" * 5000, "d" * 70000]


def frame(opcode: int, payload: bytes, masked: bool, fin: bool = True) -> bytes:
    data = encode_frame(opcode, payload, masked)
    return data if fin else bytes((data[0] & 0x7F,)) + data[1:]


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("text", MESSAGES, ids=lambda t: f"{len(t)}chars")
def test_one_text_frame_in_one_piece(masked, text):
    decoder = FrameDecoder(masked=masked, max_message_size=1 << 20)
    assert decoder.receive(frame(OP_TEXT, text.encode(), masked)) == [(TEXT, text)]


@pytest.mark.parametrize("masked", [True, False])
@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 130, 1 << 20])
def test_a_stream_decodes_the_same_in_any_chunks(masked, chunk):
    stream = b"".join(frame(OP_TEXT, t.encode(), masked) for t in MESSAGES)
    stream += frame(OP_TEXT, b"frag", masked, fin=False) + frame(OP_PING, b"p", masked)
    stream += frame(OP_CONTINUATION, b"mented", masked) + frame(OP_BINARY, b"\x00\xff", masked)
    stream += encode_close(1000, "bye", masked)
    decoder = FrameDecoder(masked=masked, max_message_size=1 << 20)
    events = []
    for i in range(0, len(stream), chunk):
        events += decoder.receive(stream[i : i + chunk])
    expected = [(TEXT, t) for t in MESSAGES]
    expected += [(PING, b"p"), (TEXT, "fragmented"), (BINARY, b"\x00\xff"), (CLOSE, 1000, "bye")]
    assert events == expected


@pytest.mark.parametrize("size", [100, 126, 5000])
def test_oversized_messages_are_refused_before_buffering(size):
    data = frame(OP_TEXT, b"z" * size, True)
    with pytest.raises(FrameError) as info:
        FrameDecoder(masked=True, max_message_size=size - 1).receive(data)
    assert info.value.code == 1009
    assert FrameDecoder(masked=True, max_message_size=size).receive(data) == [(TEXT, "z" * size)]


@pytest.mark.parametrize("data, code", [
    (frame(OP_TEXT, b"\xff\xfe", True), 1007),  # invalid UTF-8
    (frame(OP_TEXT, b"plain", False), 1002),  # a client frame must be masked
    (bytes((0x80 | 0x40 | OP_TEXT,)) + frame(OP_TEXT, b"rsv", True)[1:], 1002),  # reserved bit
    (frame(OP_CLOSE, b"\x03", True), 1002),  # 1-byte close payload
], ids=["utf8", "unmasked", "rsv", "close1"])
def test_bad_frames_raise_with_their_close_code(data, code):
    with pytest.raises(FrameError) as info:
        FrameDecoder(masked=True, max_message_size=1 << 20).receive(data)
    assert info.value.code == code


@pytest.mark.parametrize("size", [0, 1, 3, 4, 5, 315, 4096, 70001])
def test_masking_helpers_agree_and_undo_themselves(size):
    payload, key = bytes(range(256)) * (size // 256) + bytes(range(size % 256)), b"\x12\x34\xab\xcd"
    masked = _apply_mask_python(payload, key)
    assert apply_mask(payload, key) == masked
    assert _apply_mask_python(masked, key) == payload
    assert size < 4 or masked != payload
