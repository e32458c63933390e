"""kite.transport.websocket: RFC 6455 with our frame codec, server (gevent-websocket upgrade) and client side.

Real sockets on 127.0.0.1; "raw" tests speak bytes written by hand to check what
the server does with frames a well-behaved client would never send.
"""

import contextlib
import os
import random
import socket
import struct

import gevent
import pytest
from gevent.pywsgi import WSGIServer

from kite import testkeys
from kite.transport import websocket
from kite.transport.websocket import WebSocket
from kite.transport.wsclient import HandshakeError, connect
from kite.transport.wsgi import make_server
from tests.serving import serve

# The key/accept pair of the Go capture (interop wire-websocket.log, conn 1).
KEY = "q4pkL9EekDcKQT4uAvq6Sw=="
ACCEPT = b"qB3Gfq8vJ6VXHRUCjdweO3iZpcE="
SMALL_LIMIT = 64 * 1024


class EchoApp:
    """Echoes every message; "close:CODE" makes the server close with CODE."""

    def __init__(self, max_message_size=websocket.MAX_MESSAGE_SIZE):
        self.max_message_size = max_message_size
        self.closed_with = []  # close codes the server saw, one per finished connection
        self.nodelay = []

    def __call__(self, environ, start_response):
        ws = WebSocket.from_environ(environ, max_message_size=self.max_message_size)
        if ws is None:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not a websocket"]
        sock = environ["wsgi.websocket"].handler.socket
        self.nodelay.append(sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
        try:
            while (text := ws.recv_text()) is not None:
                if text.startswith("close:"):
                    ws.close(int(text[6:]), "bye")
                    continue
                ws.send_text(text)
        finally:
            ws.close()
            ws.wait_closed()
            self.closed_with.append(ws.close_code)
        return []


@pytest.fixture
def echo():
    app = EchoApp(max_message_size=SMALL_LIMIT)
    with serve(app) as server:
        app.url = f"ws://127.0.0.1:{server.server_port}/ws"
        app.port = server.server_port
        yield app


# -- raw protocol helpers ----------------------------------------------------------------


def frame(opcode, payload=b"", fin=True, mask=True, rsv=0):
    """One client frame, built by hand."""
    head = bytes([(0x80 if fin else 0) | rsv | opcode])
    n = len(payload)
    bit = 0x80 if mask else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack("!H", n)
    else:
        head += bytes([bit | 127]) + struct.pack("!Q", n)
    if mask:
        key = os.urandom(4)
        payload = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
        head += key
    return head + payload


class RawClient:
    """A WebSocket client made of a socket and hand-written bytes."""

    def __init__(self, port, path="/ws", extra=b""):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        request = (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
        self.sock.sendall(request + extra)  # extra: frames sent before the 101 arrives
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            self.buf += self._recv()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 101 ")
        assert b"Sec-WebSocket-Accept: " + ACCEPT in head

    def _recv(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError
        return data

    def _take(self, n):
        while len(self.buf) < n:
            self.buf += self._recv()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_frame(self):
        """(opcode, payload) of the next server frame; server frames must be unmasked."""
        b0, b1 = self._take(2)
        assert not b1 & 0x80, "server frames are never masked"
        n = b1 & 0x7F
        if n == 126:
            (n,) = struct.unpack("!H", self._take(2))
        elif n == 127:
            (n,) = struct.unpack("!Q", self._take(8))
        return b0 & 0x0F, self._take(n)

    def read_close(self):
        """The close code the server sent, skipping data frames; None for an empty close."""
        while True:
            opcode, payload = self.read_frame()
            if opcode == 0x8:
                return struct.unpack("!H", payload[:2])[0] if payload else None

    def close(self):
        self.sock.close()


def assert_works(url):
    client = connect(url, timeout=5)
    client.send_text("still here")
    assert client.recv_text() == "still here"
    client.close()
    assert client.wait_closed()


# -- client and server, well behaved --------------------------------------------------------


def test_echo_and_close_handshake(echo):
    client = connect(echo.url, timeout=5)
    for text in ["hello", "", "é" * 1000, "y" * 60_000]:
        client.send_text(text)
        assert client.recv_text() == text
    client.send_texts(["one", "two", "three"])
    assert [client.recv_text() for _ in range(3)] == ["one", "two", "three"]
    client.close()
    assert client.recv_text() is None
    assert client.wait_closed()
    gevent.sleep(0.05)
    assert echo.closed_with == [1000]
    assert echo.nodelay and all(echo.nodelay)
    assert client._sock.fileno() == -1  # released


def test_client_sets_nodelay(echo):
    client = connect(echo.url, timeout=5)
    assert client._sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    client.close()


def test_server_initiated_close_code_reaches_client(echo):
    client = connect(echo.url, timeout=5)
    client.send_text("close:3000")
    assert client.recv_text() is None
    assert (client.close_code, client.close_reason) == (3000, "bye")
    assert client.wait_closed()


def test_send_after_close_raises(echo):
    client = connect(echo.url, timeout=5)
    client.close()
    with pytest.raises(websocket.WebSocketClosed):
        client.send_text("late")
    assert client.closed


def test_ping_is_answered_and_pong_ignored(echo):
    raw = RawClient(echo.port)
    raw.sock.sendall(frame(0x9, b"are you there") + frame(0xA, b"unsolicited") + frame(0x1, b"after"))
    assert raw.read_frame() == (0xA, b"are you there")
    assert raw.read_frame() == (0x1, b"after")
    raw.close()
    client = connect(echo.url, timeout=5)
    client.ping(b"x")
    client.send_text("ok")
    assert client.recv_text() == "ok"
    client.close()


def test_frames_sent_with_the_handshake_are_not_lost(echo):
    # The handler's buffered rfile already holds this frame when the app takes over.
    raw = RawClient(echo.port, extra=frame(0x1, b"early"))
    assert raw.read_frame() == (0x1, b"early")
    raw.close()


def test_a_burst_sent_with_the_handshake_arrives_whole_and_in_order(echo):
    # More than the handler's buffered reader holds: part is read from its buffer,
    # the rest (and everything later) from the socket itself.
    burst = [f"{i:02d}".encode() * 1000 for i in range(12)]
    raw = RawClient(echo.port, extra=b"".join(frame(0x1, m) for m in burst))
    assert [raw.read_frame() for _ in burst] == [(0x1, m) for m in burst]
    raw.sock.sendall(frame(0x1, b"later"))
    assert raw.read_frame() == (0x1, b"later")
    raw.close()


def test_fragmented_and_binary_messages(echo):
    raw = RawClient(echo.port)
    raw.sock.sendall(frame(0x1, b"frag", fin=False) + frame(0x9, b"p") + frame(0x0, b"mented"))
    assert raw.read_frame() == (0xA, b"p")
    assert raw.read_frame() == (0x1, b"fragmented")
    raw.sock.sendall(frame(0x2, "bïnary".encode()))
    assert raw.read_frame() == (0x1, "bïnary".encode())
    raw.close()


def test_empty_close_frame_like_ws3(echo):
    raw = RawClient(echo.port)
    raw.sock.sendall(frame(0x8, b""))
    assert raw.read_close() is None  # the empty close is echoed empty
    assert raw.sock.recv(10) == b""  # and the server drops TCP
    raw.close()
    gevent.sleep(0.05)
    assert echo.closed_with == [1005]


def test_gevent_websocket_sends_no_second_close(echo):
    raw = RawClient(echo.port)
    raw.sock.sendall(frame(0x1, b"close:3001"))
    assert raw.read_close() == 3001
    raw.sock.sendall(frame(0x8, struct.pack("!H", 3001)))
    rest = b""
    with contextlib.suppress(OSError):
        while data := raw.sock.recv(65536):
            rest += data
    assert rest == b""
    raw.close()


# -- bad input: each gets a close code, a concurrent client keeps working --------------------


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (frame(0x1, b"unmasked", mask=False), 1002),
        (frame(0x1, b"\xff\xfeinvalid utf-8"), 1007),
        (frame(0x2, b"\xc3("), 1007),
        (frame(0x1, b"x", rsv=0x40), 1002),  # permessage-deflate was not negotiated
        (frame(0x3, b"x"), 1002),  # reserved opcode
        (frame(0x0, b"x"), 1002),  # continuation without a start
        (frame(0x9, b"p", fin=False), 1002),  # fragmented control frame
        (frame(0x8, b"\x03"), 1002),  # 1-byte close payload
        (frame(0x1, b"x" * (SMALL_LIMIT + 1)), 1009),
        (frame(0x1, b"x" * 40_000, fin=False) + frame(0x0, b"x" * 40_000), 1009),
    ],
    ids=[
        "unmasked",
        "text-invalid-utf8",
        "binary-invalid-utf8",
        "rsv1",
        "reserved-opcode",
        "lone-continuation",
        "fragmented-ping",
        "one-byte-close",
        "too-big",
        "too-big-fragmented",
    ],
)
def test_bad_frames_get_close_codes(echo, data, code):
    good = connect(echo.url, timeout=5)
    raw = RawClient(echo.port)
    raw.sock.sendall(data)
    assert raw.read_close() == code
    raw.close()
    good.send_text("fine")
    assert good.recv_text() == "fine"
    good.close()


def test_garbage_burst_closes_only_that_connection(echo):
    good = connect(echo.url, timeout=5)
    answers = []

    def chatter():
        for i in range(50):
            good.send_text(f"m{i}")
            answers.append(good.recv_text())
            gevent.sleep(0.002)

    worker = gevent.spawn(chatter)
    raw = RawClient(echo.port)
    garbage = random.Random(7).randbytes(1024 * 1024)
    sender = gevent.spawn(raw.sock.sendall, garbage)
    assert raw.read_close() in (1002, 1007, 1009)
    sender.join(5)
    raw.close()
    worker.join(10)
    assert answers == [f"m{i}" for i in range(50)]
    good.close()
    assert_works(echo.url)


def test_oversized_message_from_the_server_side_client(echo):
    """The client side enforces its own cap too."""
    client = connect(echo.url, timeout=5, max_message_size=1000)
    client.send_text("z" * 2000)
    assert client.recv_text() is None
    assert client.close_code == 1009


# -- client handshake failures -----------------------------------------------------------


def test_rejected_handshake_reports_status():
    def app(environ, start_response):
        start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "4")])
        return [b"nope"]

    server = WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    try:
        with pytest.raises(HandshakeError) as info:
            connect(f"ws://127.0.0.1:{server.server_port}/x", timeout=5)
        assert info.value.status_code == 404
        assert info.value.body == b"nope"
        assert isinstance(info.value, ConnectionError)
    finally:
        server.stop()


def test_connect_timeout_covers_the_handshake():
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # accepts TCP, never answers the upgrade
    try:
        with pytest.raises(TimeoutError):
            connect(f"ws://127.0.0.1:{listener.getsockname()[1]}/", timeout=0.3)
    finally:
        listener.close()


def test_connection_refused():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(OSError):
        connect(f"ws://127.0.0.1:{port}/", timeout=2)


def test_bad_scheme():
    with pytest.raises(ValueError):
        connect("ftp://127.0.0.1/")


def test_from_environ_without_upgrade_is_none():
    assert WebSocket.from_environ({"REQUEST_METHOD": "GET"}) is None


def test_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6")
    app = EchoApp()
    try:
        server = make_server(app, "::1", 0)
        server.start()
    except OSError:
        pytest.skip("cannot bind ::1")
    try:
        client = connect(f"ws://[::1]:{server.server_port}/", timeout=5)
        client.send_text("v6")
        assert client.recv_text() == "v6"
        client.close()
    finally:
        server.stop(timeout=1)


def test_wss(tmp_path):
    import ssl

    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_text(testkeys.tls_cert_pem())
    key_file.write_text(testkeys.tls_key_pem())
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    client_ctx = ssl.create_default_context(cafile=str(cert_file))
    app = EchoApp()
    with serve(app, ssl_context=server_ctx) as server:
        client = connect(f"wss://127.0.0.1:{server.server_port}/", timeout=5, ssl_context=client_ctx)
        client.send_text("secret")
        assert client.recv_text() == "secret"
        client.close()
        assert client.wait_closed()


def test_recv_texts_takes_what_one_read_brought_and_control_frames_are_still_handled():
    def app(environ, start_response):
        ws = WebSocket.from_environ(environ)
        ws.recv_text()
        ws.send_frames(b"".join([ws.text_frame("one"), websocket.encode_frame(0x9, b"p", False),
                                 ws.text_frame("two"), ws.text_frame("three")]))  # one write
        ws.recv_text()  # until the client closes
        ws.close()
        ws.wait_closed()
        return []

    with serve(app) as server:
        ws = connect(f"ws://127.0.0.1:{server.server_port}/ws", timeout=5)
        ws.send_text("go")
        assert ws.recv_texts() == ["one", "two", "three"]
        ws.close()
        assert ws.recv_texts() is None


def test_the_watchdog_drops_a_silent_peer_but_not_one_whose_bytes_wait_unread():
    """Silence means nothing came from the peer -- not that our reader has not read yet: a loaded
    process may run the watchdog's timer before the reader's wake-up (CI dropped a live probe client
    in a 500-client reconnect storm). Bytes the kernel holds for us count as the peer speaking."""
    ours, theirs = socket.socketpair()
    ws = WebSocket(gevent.socket.socket(fileno=ours.detach()), client=True)  # the peer: a server (no mask)
    pings = []
    try:
        theirs.sendall(b"\x81\x02hi")  # a frame nobody reads: the reader is busy elsewhere
        ws.watch_liveness(0.3, lambda: pings.append(1))
        gevent.sleep(1.0)  # more than three silent ticks
        assert not ws.closed and pings  # pinged (nothing read), never dropped
        assert ws.recv_text() == "hi"  # the reader catches up; now the peer is silent for real
        started = gevent.get_hub().loop.now()
        while not ws.closed and gevent.get_hub().loop.now() - started < 2:
            gevent.sleep(0.05)
        assert ws.closed and ws.close_code == websocket.CLOSE_ABNORMAL
        assert 0.2 <= gevent.get_hub().loop.now() - started <= 1.0
    finally:
        ws.abort()
        theirs.close()
