"""Hostile input sent to a REAL kite on 127.0.0.1, over a raw websocket, SockJS and xhr_send.

After every hostile message the same connection still answers a good call (dnode garbage is
dropped, the connection stays); after hostile websocket bytes or SockJS payloads (the
connection is closed, as the protocol says) a fresh client's call is answered.
"""

import json
import os
import socket
import struct
import uuid

import gevent
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st

from kite import Kite
from kite.transport import wsclient
from kite.wire import wsframes
from tests.serving import serve_kite

from .strategies import deep_text, examples, json_texts, mutated
from .test_dnode import dnode_messages
from .test_sockjs import client_payloads
from .test_websocket import frame_streams

#: Seconds a reply may take before the kite counts as dead.
REPLY_TIMEOUT = 5


@pytest.fixture(scope="module")
def kite():
    k = Kite("hostile", "1.0.0")
    k.config.ip, k.config.port = "127.0.0.1", 0
    k.config.disable_authentication = True
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("echo", lambda r: r.args[0] if r.args else None)
    serve_kite(k)
    yield k
    k.close()


def square_call(x, cb_id):
    return json.dumps({"method": "square", "arguments": [{"withArgs": [x], "responseCallback": "[Function]"}],
                       "callbacks": {str(cb_id): [0, "responseCallback"]}})


def answer_to(ws, cb_id, unwrap=lambda text: [text]):
    """The result of the reply to callback ``cb_id``, skipping replies to hostile calls."""
    with gevent.Timeout(REPLY_TIMEOUT):
        while True:
            text = ws.recv_text()
            assert text is not None, "the kite closed the connection"
            for message in unwrap(text):
                reply = json.loads(message)
                if reply.get("method") == cb_id:
                    return reply["arguments"][0]["result"]


def good_call_from_a_new_client(k, x=7):
    """A fresh raw-websocket client's call is answered."""
    ws = wsclient.connect(f"ws://127.0.0.1:{k.port}/kite/websocket", timeout=REPLY_TIMEOUT)
    try:
        ws.send_text(square_call(x, 424242))
        assert answer_to(ws, 424242) == x * x
    finally:
        ws.close()


@pytest.fixture(scope="module")
def raw_connection(kite):
    ws = wsclient.connect(f"ws://127.0.0.1:{kite.port}/kite/websocket", timeout=REPLY_TIMEOUT)
    yield ws
    ws.close()


@examples(40)
@given(st.one_of(dnode_messages(), mutated(dnode_messages()), json_texts))
def test_hostile_dnode_messages_leave_the_connection_serving(raw_connection, text):
    raw_connection.send_text(text)
    raw_connection.send_text(square_call(3, 999_000))
    assert answer_to(raw_connection, 999_000) == 9


@pytest.mark.parametrize(
    "text",
    [
        '{"method": "x", "callbacks": {"' + "1" * 5000 + '": [0]}}',
        '{"method": "x", "callbacks": {"0": [' + deep_text(990) + "]}}",
        '{"method": "square", "arguments": [{"withArgs": [1' + "0" * 400 + '], "responseCallback": "[Function]"}],'
        ' "callbacks": {"0": [0, "responseCallback"]}}',
    ],
)
def test_regression_messages_that_broke_the_reader(raw_connection, text):
    raw_connection.send_text(text)
    raw_connection.send_text(square_call(4, 999_001))
    assert answer_to(raw_connection, 999_001) == 16


def test_regression_echo_of_a_deep_value_gets_an_error_answer(raw_connection):
    # The reply could not be scrubbed (RecursionError) and was never sent: the caller hung.
    raw_connection.send_text('{"method": "echo", "arguments": [{"withArgs": [' + deep_text(1000) + '],'
                             ' "responseCallback": "[Function]"}], "callbacks": {"5": [0, "responseCallback"]}}')
    with gevent.Timeout(REPLY_TIMEOUT):
        reply = json.loads(raw_connection.recv_text())
    assert reply["method"] == 5 and reply["arguments"][0]["error"]["type"] == "genericError"


@examples(15)
@given(st.one_of(client_payloads, mutated(client_payloads)))
def test_hostile_sockjs_payloads_then_good_calls(kite, payload):
    ws = wsclient.connect(f"ws://127.0.0.1:{kite.port}/kite/0/{uuid.uuid4().hex}/websocket", timeout=REPLY_TIMEOUT)
    try:
        assert ws.recv_text() == "o"
        ws.send_text(payload)
        ws.send_text(json.dumps([square_call(5, 77)]))
        try:
            assert answer_to(ws, 77, unwrap=lambda frame: json.loads(frame[1:]) if frame[0] == "a" else []) == 25
        except AssertionError:
            pass  # a broken payload closes the session (sockjs-go does too); a new client must be served
    finally:
        ws.close()
    good_call_from_a_new_client(kite)


@examples(15)
@given(st.one_of(client_payloads, mutated(client_payloads)).map(lambda text: text.encode("utf-8", "surrogatepass")))
def test_hostile_xhr_send_bodies_get_an_http_answer(kite, body):
    base = f"http://127.0.0.1:{kite.port}/kite/0/{uuid.uuid4().hex}"
    assert requests.post(base + "/xhr", timeout=REPLY_TIMEOUT).text == "o\n"
    status = requests.post(base + "/xhr_send", data=body, timeout=REPLY_TIMEOUT).status_code
    assert status in (204, 400, 404, 500)  # 500 "Broken JSON encoding." is SockJS's own answer
    good_call_from_a_new_client(kite)


def handshake(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=REPLY_TIMEOUT)
    sock.sendall(b"GET /kite/websocket HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                 b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        head += sock.recv(4096)
    assert head.startswith(b"HTTP/1.1 101")
    return sock


@examples(15)
@given(st.one_of(frame_streams(masked=True), st.binary(min_size=1, max_size=300)))
def test_hostile_websocket_bytes_then_a_new_client_is_served(kite, data):
    sock = handshake(kite.port)
    try:
        sock.sendall(data)
        sock.sendall(wsframes.encode_frame(wsframes.OP_TEXT, square_call(6, 55).encode(), mask=True))
    except OSError:
        pass  # the kite already closed on the garbage
    finally:
        sock.close()
    good_call_from_a_new_client(kite)


def test_a_megabyte_of_random_bytes_and_a_huge_frame_header(kite):
    sock = handshake(kite.port)
    sock.sendall(struct.pack("!BBQ", 0x81, 0xFF, 2**62) + os.urandom(4))  # announces 4 EiB, masked
    sock.close()
    sock = socket.create_connection(("127.0.0.1", kite.port))
    try:
        sock.sendall(os.urandom(1024 * 1024))
    except OSError:
        pass
    sock.close()
    good_call_from_a_new_client(kite)
