"""kite.wire.sockjs: pure SockJS framing (PROTOCOL.md §1.2)."""

import ast
import json
import random

import pytest

from kite.errors import RemoteProtocolError
from kite.wire import sockjs as frames
from kite.wire.sockjs import (
    HEARTBEAT,
    OPEN,
    decode_client_payload,
    decode_server_frame,
    encode_client_payload,
    encode_close,
    encode_messages,
)

# A response message exactly as the Go kite framed it (interop wire-websocket.log, conn 1).
GO_RESPONSE = '{"method":0,"arguments":[{"error":null,"result":49}],"callbacks":{}}'
GO_FRAME = 'a["{\\"method\\":0,\\"arguments\\":[{\\"error\\":null,\\"result\\":49}],\\"callbacks\\":{}}"]'


def test_constants():
    assert OPEN == "o"
    assert HEARTBEAT == "h"


def test_encode_messages_matches_go_bytes():
    assert encode_messages([GO_RESPONSE]) == GO_FRAME
    assert len(GO_FRAME) == 83  # "len=83" in the capture


def test_encode_messages_several_and_none():
    assert encode_messages(["a", "b"]) == 'a["a","b"]'
    assert encode_messages([]) == "a[]"


def test_encode_messages_non_ascii_round_trips_as_valid_utf8():
    for text in ("héllo \u2028 😀", "lone \ud800 surrogate"):
        frame = encode_messages([text])
        frame.encode("utf-8")  # always sendable: a lone surrogate is escaped
        assert decode_server_frame(frame) == ("messages", [text])


def test_encode_close():
    assert encode_close(3000, "Go away!") == 'c[3000,"Go away!"]'
    assert encode_close(2010, "Another connection still open") == 'c[2010,"Another connection still open"]'


def test_encode_client_payload():
    assert encode_client_payload(["m1", "m2"]) == '["m1","m2"]'
    assert decode_client_payload(encode_client_payload(['{"x":"y"}'])) == ['{"x":"y"}']


@pytest.mark.parametrize(
    ("payload", "expected"),
    [
        ('["a"]', ["a"]),
        ('["a","b","c"]', ["a", "b", "c"]),
        ("[]", []),
        (' [ "a" , "b" ] \n', ["a", "b"]),
        (b'["bytes"]', ["bytes"]),
        ('["\\u00e9"]', ["é"]),
        ('["{\\"method\\":\\"square\\"}"]', ['{"method":"square"}']),
    ],
)
def test_decode_client_payload(payload, expected):
    assert decode_client_payload(payload) == expected


@pytest.mark.parametrize(
    "payload",
    [
        "",
        "   ",
        '"bare string"',  # sockjs-node accepts it, Go closes: we follow Go
        "{}",
        '{"a":1}',
        "[1]",
        '["a",1]',
        '["a",null]',
        '[["a"]]',
        "null",
        "42",
        "not json",
        '["unterminated',
        "[" * 100000 + "]" * 100000,  # recursion
        b"\xff\xfe",
        b'["\xff"]',
        12,
        None,
    ],
)
def test_decode_client_payload_rejects(payload):
    with pytest.raises(RemoteProtocolError):
        decode_client_payload(payload)


@pytest.mark.parametrize(
    ("frame", "expected"),
    [
        ("o", ("open", None)),
        ("h", ("heartbeat", None)),
        ("o\n", ("open", None)),
        ("h\r\n", ("heartbeat", None)),
        ('a["x"]', ("messages", ["x"])),
        ('a["x","y"]\n', ("messages", ["x", "y"])),
        ("a[]", ("messages", [])),
        ('m"single"', ("messages", ["single"])),
        ('c[3000,"Go away!"]', ("close", (3000, "Go away!"))),
        ('c[2010,"Another connection still open"]\n', ("close", (2010, "Another connection still open"))),
        (b"o", ("open", None)),
        (GO_FRAME, ("messages", [GO_RESPONSE])),
    ],
)
def test_decode_server_frame(frame, expected):
    assert decode_server_frame(frame) == expected


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "\n",
        "x",
        "oo",
        "o1",
        "hh",
        "a",
        "a{",
        'a"x"',
        "a[1]",
        'a["x",{}]',
        "m",
        "m[]",
        "m1",
        "c",
        "c[]",
        "c[3000]",
        'c["3000","x"]',
        'c[true,"x"]',
        "c[3000,1]",
        'c[3000,"x",1]',
        "a" + "[" * 100000,
        b"\xff",
        b'a["\xc3"]',
        3.5,
    ],
)
def test_decode_server_frame_rejects(frame):
    with pytest.raises(RemoteProtocolError):
        decode_server_frame(frame)


def test_parsers_only_raise_remote_protocol_error_on_garbage():
    rng = random.Random(1234)
    alphabet = 'aocmh[]{}",:0123456789\\u \n\x00é'
    samples = []
    for _ in range(3000):
        n = rng.randint(0, 24)
        samples.append("".join(rng.choice(alphabet) for _ in range(n)))
        samples.append(bytes(rng.randrange(256) for _ in range(n)))
    for sample in samples:
        for parse in (decode_client_payload, decode_server_frame):
            try:
                parse(sample)
            except RemoteProtocolError:
                pass


def test_round_trip_random_messages():
    rng = random.Random(99)
    for _ in range(200):
        messages = [json.dumps({"k": rng.random(), "s": chr(rng.randrange(32, 0x2FFF))}) for _ in range(3)]
        assert decode_server_frame(encode_messages(messages)) == ("messages", messages)
        assert decode_client_payload(encode_client_payload(messages)) == messages


def test_frames_module_is_pure():
    tree = ast.parse(open(frames.__file__, encoding="utf-8").read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    assert not imported & {"gevent", "socket", "ssl", "select", "asyncio", "threading"}


def test_batches_cut_at_the_limit_and_keep_every_message_once():
    messages = ["a" * 4, "b" * 4, "c" * 9, "d", "e" * 3]
    assert frames.first_batch(messages, 8) == 2
    assert frames.batches(messages, 8) == [["a" * 4, "b" * 4], ["c" * 9], ["d", "e" * 3]]  # a long one alone
    assert frames.batches(messages, 100) == [messages]
    assert frames.batches([], 8) == []
    for _ in range(200):
        ms = ["x" * random.randint(0, 20) for _ in range(random.randint(0, 30))]
        limit = random.randint(1, 40)
        cut = frames.batches(ms, limit)
        assert [m for b in cut for m in b] == ms
        assert all(b and (len(b) == 1 or sum(map(len, b)) <= limit) for b in cut)
