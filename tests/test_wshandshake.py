"""kite.wire.wshandshake: the client's opening handshake as pure code (RFC 6455 §4)."""

import pytest

from kite.wire import wshandshake
from kite.wire.wshandshake import HandshakeError

URL = "ws://example.test/kite/websocket"
#: RFC 6455 §1.3's worked example.
RFC_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
RFC_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def test_accept_value_matches_the_rfc_example():
    assert wshandshake.accept_value(RFC_KEY) == RFC_ACCEPT


def test_new_keys_are_16_random_bytes_in_base64():
    keys = {wshandshake.new_key() for _ in range(20)}
    assert len(keys) == 20
    assert all(len(k) == 24 and k.endswith(b"==") for k in keys)


def test_request_carries_the_upgrade_fields_and_extra_headers():
    request = wshandshake.build_request("h:1", "/kite?x=1", RFC_KEY, {"Origin": "http://o"}).decode()
    assert request.startswith("GET /kite?x=1 HTTP/1.1\r\nHost: h:1\r\n")
    assert "Upgrade: websocket\r\n" in request and "Connection: Upgrade\r\n" in request
    assert f"Sec-WebSocket-Key: {RFC_KEY.decode()}\r\n" in request and "Sec-WebSocket-Version: 13\r\n" in request
    assert request.endswith("Origin: http://o\r\n\r\n")
    pairs = wshandshake.build_request("h", "/", RFC_KEY, [(b"X-A", b"1"), ("X-B", "2")]).decode()
    assert "X-A: 1\r\nX-B: 2\r\n\r\n" in pairs


@pytest.mark.parametrize("headers", [{"X-Bad": "a\r\nInjected: 1"}, [("X-Bad\n", "v")]])
def test_a_header_with_a_line_break_is_refused(headers):
    with pytest.raises(ValueError, match="line break"):
        wshandshake.build_request("h", "/", RFC_KEY, headers)


def test_split_head_waits_for_the_blank_line_and_keeps_what_follows():
    assert wshandshake.split_head(b"HTTP/1.1 101 Switching\r\nUpgrade: websocket\r\n", URL) is None
    assert wshandshake.split_head(b"HTTP/1.1 101 S\r\nA: b\r\n\r\n\x81\x02hi", URL) == (
        b"HTTP/1.1 101 S\r\nA: b",
        b"\x81\x02hi",
    )


def test_split_head_refuses_an_endless_head():
    with pytest.raises(HandshakeError, match="too long"):
        wshandshake.split_head(b"HTTP/1.1 101 S\r\n" + b"X: y\r\n" * 20000, URL)


def test_parse_head_lowercases_names_and_strips_values():
    status, headers = wshandshake.parse_head(b"HTTP/1.1 403 Forbidden\r\nContent-Length:  12 \r\nX-Why: no", URL)
    assert status == 403
    assert headers == [(b"content-length", b"12"), (b"x-why", b"no")]
    assert wshandshake.reject_body_length(headers) == 12


@pytest.mark.parametrize(
    "head, match",
    [
        (b"SSH-2.0-OpenSSH", "bad WebSocket handshake response"),
        (b"HTTP/1.1 abc Nope", "bad WebSocket handshake response"),
        (b"HTTP/1.1 101 OK\r\nno colon here", "bad header line"),
    ],
)
def test_parse_head_refuses_garbage(head, match):
    with pytest.raises(HandshakeError, match=match):
        wshandshake.parse_head(head, URL)


@pytest.mark.parametrize(
    "headers, want",
    [([], 0), ([(b"content-length", b"abc")], 0), ([(b"content-length", b"999999999")], wshandshake.MAX_REJECT_BODY)],
)
def test_reject_body_length_is_bounded(headers, want):
    assert wshandshake.reject_body_length(headers) == want


def _answer(**fields):
    base = {b"upgrade": b"WebSocket", b"connection": b"keep-alive, Upgrade", b"sec-websocket-accept": RFC_ACCEPT}
    base.update({k.replace("_", "-").encode(): v for k, v in fields.items()})
    return [(k, v) for k, v in base.items() if v is not None]


def test_a_correct_answer_is_accepted():
    wshandshake.check_accepted(_answer(), RFC_KEY, URL)


@pytest.mark.parametrize(
    "fields, match",
    [
        ({"upgrade": None}, "missing or wrong upgrade headers"),
        ({"connection": b"close"}, "missing or wrong upgrade headers"),
        ({"sec_websocket_accept": b"wrong="}, "missing or wrong upgrade headers"),
        ({"sec_websocket_extensions": b"permessage-deflate"}, "extension we did not offer"),
    ],
)
def test_a_wrong_answer_is_refused(fields, match):
    with pytest.raises(HandshakeError, match=match) as info:
        wshandshake.check_accepted(_answer(**fields), RFC_KEY, URL)
    assert info.value.status_code == 101
