"""kite.transport.sockjs.server: the SockJS endpoints under /kite, over real sockets (PROTOCOL.md §1)."""

import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import time

import gevent
import pytest
import requests
from gevent.event import Event

from kite.transport import wsclient
from kite.transport.sockjs.client import dial
from kite.transport.sockjs.server import XHR_STREAMING_PRELUDE, SockJSServer
from tests.serving import Echo, serve

HEARTBEAT = 0.3
DISCONNECT = 0.5
LIMIT = 64 * 1024
STREAM_LIMIT = 4096
GO_AWAY = 'c[3000,"Go away!"]'


class Kite:
    def __init__(self, port, echo, app):
        self.port, self.echo, self.app = port, echo, app
        self.base = f"http://127.0.0.1:{port}/kite"
        self.ws_base = f"ws://127.0.0.1:{port}/kite"
        self.http = requests.Session()

    def session_url(self):
        return f"{self.base}/{random.randint(100, 999)}/{random.getrandbits(64):016x}"

    def post(self, url, data=b"", **kwargs):
        return self.http.post(url, data=data, timeout=5, **kwargs)

    def sockjs_ws(self):
        ws = wsclient.connect(f"{self.ws_base}/123/{random.getrandbits(64):x}/websocket", timeout=5)
        assert ws.recv_text() == "o"
        return ws


@pytest.fixture
def kite():
    echo = Echo()
    app = SockJSServer(
        prefix="/kite",
        on_session=echo,
        heartbeat_interval=HEARTBEAT,
        disconnect_delay=DISCONNECT,
        streaming_limit=STREAM_LIMIT,
        max_message_size=LIMIT,
    )
    with serve(app) as server:
        kite = Kite(server.server_port, echo, app)
        yield kite
        kite.http.close()


def assert_ws_works(kite):
    ws = kite.sockjs_ws()
    ws.send_text('["ping"]')
    assert ws.recv_text() == 'a["ping"]'
    ws.close()


def recv_skipping_heartbeats(ws):
    while (text := ws.recv_text()) == "h":
        pass
    return text


# -- plain HTTP endpoints --------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/kite", "/kite/"])
def test_greeting(kite, path):
    r = kite.http.get(f"http://127.0.0.1:{kite.port}{path}", timeout=5)
    assert r.status_code == 200
    assert r.text == "Welcome to SockJS!\n"
    assert r.headers["Content-Type"] == "text/plain;charset=UTF-8"


@pytest.mark.parametrize("query", ["", "?t=1700000000000"])
def test_info(kite, query):
    r = kite.http.get(f"{kite.base}/info{query}", timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/json; charset=UTF-8"
    assert r.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"
    info = r.json()
    assert list(info) == ["websocket", "cookie_needed", "origins", "entropy"]
    assert info["websocket"] is True and info["cookie_needed"] is False and info["origins"] == ["*:*"]
    assert isinstance(info["entropy"], int) and 0 <= info["entropy"] < 2**31


@pytest.mark.parametrize(
    ("origin", "expected"), [("http://app.example.com:8080", "http://app.example.com:8080"), ("null", "*")]
)
def test_cors_reflects_origin(kite, origin, expected):
    r = kite.http.get(f"{kite.base}/info", headers={"Origin": origin}, timeout=5)
    assert r.headers["Access-Control-Allow-Origin"] == expected
    r = kite.post(f"{kite.session_url()}/xhr", headers={"Origin": origin})
    assert r.headers["Access-Control-Allow-Origin"] == expected
    assert r.headers["Access-Control-Allow-Credentials"] == "true"


def test_options_info(kite):
    r = kite.http.options(
        f"{kite.base}/info",
        headers={"Origin": "http://a.example", "Access-Control-Request-Headers": "x-requested-with"},
        timeout=5,
    )
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Methods"] == "OPTIONS, GET"
    assert r.headers["Access-Control-Allow-Origin"] == "http://a.example"
    assert r.headers["Access-Control-Allow-Headers"] == "x-requested-with"
    assert r.headers["Access-Control-Max-Age"] == "31536000"
    assert r.headers["Cache-Control"] == "public, max-age=31536000"
    assert "Expires" in r.headers


@pytest.mark.parametrize("endpoint", ["xhr", "xhr_send", "xhr_streaming"])
def test_options_xhr(kite, endpoint):
    r = kite.http.options(f"{kite.session_url()}/{endpoint}", timeout=5)
    assert r.status_code == 204
    assert r.headers["Access-Control-Allow-Methods"] == "OPTIONS, POST"
    assert r.headers["Access-Control-Allow-Credentials"] == "true"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/kite/info", "OPTIONS, GET"),
        ("DELETE", "/kite", "GET"),
        ("GET", "/kite/1/abc/xhr", "POST, OPTIONS"),
        ("GET", "/kite/1/abc/xhr_send", "POST, OPTIONS"),
        ("POST", "/kite/1/abc/websocket", "GET"),
        ("POST", "/kite/websocket", "GET"),
    ],
)
def test_wrong_method_is_405(kite, method, path, allow):
    r = kite.http.request(method, f"http://127.0.0.1:{kite.port}{path}", timeout=5)
    assert r.status_code == 405
    assert r.headers["Allow"] == allow


@pytest.mark.parametrize(
    "path",
    ["/kite/nope", "/kite/1/a.b/xhr", "/kite/1/ab/c/xhr", "/kite/1/ab/jsonp_sendx", "/other", "/kiteX", "/"],
)
def test_unknown_paths_are_404(kite, path):
    r = kite.http.get(f"http://127.0.0.1:{kite.port}{path}", timeout=5)
    assert r.status_code == 404
    assert r.text == "404 page not found\n"


def test_websocket_endpoint_without_upgrade_is_400(kite):
    r = kite.http.get(f"{kite.base}/1/abc/websocket", timeout=5)
    assert r.status_code == 400
    assert r.text == 'Can "Upgrade" only to "WebSocket".\n'


@pytest.mark.parametrize(
    ("script_name", "path_info", "status"),
    [
        ("/kite", "/info", "200 OK"),  # mounted at the prefix
        ("/app", "/kite/info", "200 OK"),  # the whole app mounted elsewhere
        ("", "/kite/info", "200 OK"),
        ("/kite", "/nope", "404 Not Found"),
        ("", "/kiteinfo", "404 Not Found"),
    ],
)
def test_wsgi_paths(script_name, path_info, status):
    app = SockJSServer(prefix="/kite")
    seen = []
    body = app(
        {"REQUEST_METHOD": "GET", "SCRIPT_NAME": script_name, "PATH_INFO": path_info},
        lambda status, headers: seen.append(status),
    )
    assert seen == [status]
    if status == "200 OK":
        assert json.loads(b"".join(body))["websocket"] is True


# -- SockJS over WebSocket ---------------------------------------------------------------------


def test_websocket_session_echo_and_coalescing(kite):
    ws = kite.sockjs_ws()
    ws.send_text('["a"]')
    assert recv_skipping_heartbeats(ws) == 'a["a"]'
    # Both echoes are sent within one loop turn: they leave as ONE frame.
    ws.send_text('["b","c"]')
    assert recv_skipping_heartbeats(ws) == 'a["b","c"]'
    ws.send_text("[]")  # an empty array is valid and carries nothing
    ws.send_text('["d"]')
    assert recv_skipping_heartbeats(ws) == 'a["d"]'
    ws.close()
    assert ws.recv_text() is None
    kite.echo.any_ended.wait(2)
    assert len(kite.echo.ended) == 1


def test_websocket_heartbeats(kite):
    ws = kite.sockjs_ws()
    started = time.monotonic()
    assert ws.recv_text() == "h"
    assert ws.recv_text() == "h"
    assert time.monotonic() - started >= HEARTBEAT * 1.5
    ws.close()


def test_websocket_server_close_sends_go_away(kite):
    ws = kite.sockjs_ws()
    ws.send_text('["close"]')
    assert recv_skipping_heartbeats(ws) == GO_AWAY
    assert ws.recv_text() is None
    assert ws.close_code == 1000


def test_on_session_failure_closes_session_and_server_lives(kite):
    ws = kite.sockjs_ws()
    ws.send_text('["raise"]')
    assert recv_skipping_heartbeats(ws) == GO_AWAY
    assert ws.recv_text() is None
    assert_ws_works(kite)


@pytest.mark.parametrize("payload", ["not json", '"bare string"', "{}", "[1,2]", '["ok",{}]', ""])
def test_websocket_bad_payload_closes_connection(kite, payload):
    good = kite.sockjs_ws()
    ws = kite.sockjs_ws()
    ws.send_text(payload)
    assert recv_skipping_heartbeats(ws) is None
    assert ws.close_code == 1002
    good.send_text('["still"]')
    assert recv_skipping_heartbeats(good) == 'a["still"]'
    good.close()


def test_websocket_oversized_message_is_1009(kite):
    good = kite.sockjs_ws()
    ws = kite.sockjs_ws()
    ws.send_text(json.dumps(["x" * LIMIT]))
    assert recv_skipping_heartbeats(ws) is None
    assert ws.close_code == 1009
    good.send_text('["still"]')
    assert recv_skipping_heartbeats(good) == 'a["still"]'
    good.close()


def _handshake(port, path):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.sendall(
        f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        "Sec-WebSocket-Key: q4pkL9EekDcKQT4uAvq6Sw==\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    assert data.startswith(b"HTTP/1.1 101")
    return sock, data.split(b"\r\n\r\n", 1)[1]


def _close_code(sock, data):
    """Read server frames until the close frame; its code."""
    while True:
        while len(data) < 2:
            data += sock.recv(65536)
        n = data[1] & 0x7F
        start = 2 + {126: 2, 127: 8}.get(n, 0)
        while len(data) < start:
            data += sock.recv(65536)
        if n >= 126:
            n = int.from_bytes(data[2:start], "big")
        while len(data) < start + n:
            data += sock.recv(65536)
        opcode, payload, data = data[0] & 0x0F, data[start : start + n], data[start + n :]
        if opcode == 0x8:
            return struct.unpack("!H", payload[:2])[0]


@pytest.mark.parametrize(
    "path",
    ["/kite/1/garbage/websocket", "/kite/websocket"],
)
def test_garbage_burst_on_one_connection_spares_others(kite, path):
    good = kite.sockjs_ws()
    answers = []

    def chatter():
        for i in range(30):
            good.send_text(json.dumps([f"m{i}"]))
            answers.append(recv_skipping_heartbeats(good))
            gevent.sleep(0.003)

    worker = gevent.spawn(chatter)
    sock, data = _handshake(kite.port, path)
    sender = gevent.spawn(sock.sendall, random.Random(11).randbytes(1024 * 1024))
    assert _close_code(sock, data) in (1002, 1007, 1009)
    sender.join(5)
    sock.close()
    worker.join(10)
    assert answers == [json.dumps([f"m{i}"], separators=(",", ":")).replace("[", "a[", 1) for i in range(30)]
    good.close()


def test_unmasked_frame_on_sockjs_websocket_is_1002(kite):
    sock, data = _handshake(kite.port, "/kite/1/unmasked/websocket")
    sock.sendall(b"\x81\x05" + b'["x"]')
    assert _close_code(sock, data) == 1002
    sock.close()
    assert_ws_works(kite)


# -- raw WebSocket (kite.js "ws" clients) -----------------------------------------------------------


def test_raw_websocket(kite):
    ws = wsclient.connect(f"{kite.ws_base}/websocket", timeout=5)
    ws.send_text('{"method":"x"}')
    assert ws.recv_text() == '{"method":"x"}'  # no "o", no SockJS framing
    ws.send_texts(["1", "2"])
    assert [ws.recv_text(), ws.recv_text()] == ["1", "2"]
    ws.send_text("close")
    assert ws.recv_text() is None
    assert (ws.close_code, ws.close_reason) == (3000, "Go away!")


def test_raw_websocket_pings_instead_of_h(kite):
    sock, data = _handshake(kite.port, "/kite/websocket")
    while len(data) < 2:
        data += sock.recv(100)
    assert data[0] == 0x89  # a ping frame after the heartbeat interval
    sock.close()


# -- XHR polling --------------------------------------------------------------------------


def test_xhr_polling_echo(kite):
    url = kite.session_url()
    r = kite.post(f"{url}/xhr")
    assert (r.status_code, r.text) == (200, "o\n")
    assert r.headers["Content-Type"] == "application/javascript; charset=UTF-8"
    assert r.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
    r = kite.post(f"{url}/xhr_send", b'["a","b"]', headers={"Content-Type": "text/plain"})
    assert r.status_code == 204
    assert r.headers["Content-Type"] == "text/plain; charset=UTF-8"
    assert kite.post(f"{url}/xhr").text == 'a["a","b"]\n'
    started = time.monotonic()
    assert kite.post(f"{url}/xhr").text == "h\n"
    assert time.monotonic() - started >= HEARTBEAT * 0.8


def test_xhr_send_chunked_like_sockjs_client(kite):
    url = kite.session_url()
    assert kite.post(f"{url}/xhr").text == "o\n"
    r = kite.post(f"{url}/xhr_send", iter([b'["chu', b'nked"', b"]"]))  # a generator body: chunked
    assert r.request.headers.get("Transfer-Encoding") == "chunked"
    assert r.status_code == 204
    assert kite.post(f"{url}/xhr").text == 'a["chunked"]\n'


def test_xhr_second_poll_gets_2010(kite):
    url = kite.session_url()
    assert kite.post(f"{url}/xhr").text == "o\n"
    first = gevent.spawn(kite.post, f"{url}/xhr")
    gevent.sleep(0.05)
    second = requests.post(f"{url}/xhr", timeout=5)
    assert second.text == 'c[2010,"Another connection still open"]\n'
    kite.post(f"{url}/xhr_send", b'["x"]')
    assert first.get(timeout=5).text == 'a["x"]\n'


@pytest.mark.parametrize(
    ("body", "status", "text"),
    [
        (b"", 500, "Payload expected.\n"),
        (b"  \n", 500, "Payload expected.\n"),
        (b"not json", 500, "Broken JSON encoding.\n"),
        (b'["unterminated', 500, "Broken JSON encoding.\n"),
        (b'{"a":1}', 500, "Broken JSON encoding.\n"),
        (b"[1]", 500, "Broken JSON encoding.\n"),
        (b'"bare"', 500, "Broken JSON encoding.\n"),
        (b'["\xff"]', 500, "Broken JSON encoding.\n"),
        (b"x" * (LIMIT + 1), 413, "Payload too large.\n"),
    ],
)
def test_xhr_send_bad_bodies(kite, body, status, text):
    url = kite.session_url()
    assert kite.post(f"{url}/xhr").text == "o\n"
    r = kite.post(f"{url}/xhr_send", body)
    assert (r.status_code, r.text) == (status, text)
    kite.post(f"{url}/xhr_send", b'["fine"]')
    assert kite.post(f"{url}/xhr").text == 'a["fine"]\n'


def test_xhr_send_to_unknown_session_is_404(kite):
    r = kite.post(f"{kite.session_url()}/xhr_send", b'["x"]')
    assert r.status_code == 404


def test_xhr_server_close(kite):
    url = kite.session_url()
    assert kite.post(f"{url}/xhr").text == "o\n"
    kite.post(f"{url}/xhr_send", b'["echoed","close"]')
    assert kite.post(f"{url}/xhr").text == 'a["echoed"]\n'
    assert kite.post(f"{url}/xhr").text == GO_AWAY + "\n"
    assert kite.post(f"{url}/xhr").text == GO_AWAY + "\n"  # until it is forgotten


def test_xhr_session_reaped_without_polls(kite):
    url = kite.session_url()
    assert kite.post(f"{url}/xhr").text == "o\n"
    assert kite.echo.any_ended.wait(DISCONNECT + 2)  # recv() returned None
    assert kite.post(f"{url}/xhr_send", b'["x"]').status_code == 404
    assert kite.post(f"{url}/xhr").text == "o\n"  # a new session under the same id


def test_reaped_session_still_hands_over_queued_messages():
    got = []
    ended = Event()

    def slow_reader(session):
        gevent.sleep(DISCONNECT + 0.3)  # busy while the client stops polling
        while (message := session.recv()) is not None:
            got.append(message)
        ended.set()

    with serve(SockJSServer(on_session=slow_reader, disconnect_delay=DISCONNECT)) as server:
        url = f"http://127.0.0.1:{server.server_port}/kite/1/slow"
        assert requests.post(f"{url}/xhr", timeout=5).text == "o\n"
        assert requests.post(f"{url}/xhr_send", b'["q1","q2"]', timeout=5).status_code == 204
        assert ended.wait(DISCONNECT + 2)
    assert got == ["q1", "q2"]


def test_xhr_session_kept_alive_by_polls(kite):
    url = kite.session_url()
    assert kite.post(f"{url}/xhr").text == "o\n"
    deadline = time.monotonic() + DISCONNECT * 2.5
    while time.monotonic() < deadline:
        assert kite.post(f"{url}/xhr").text == "h\n"
    assert not kite.echo.ended


# -- XHR streaming ----------------------------------------------------------------------------


def _lines(response):
    buffer = b""
    for chunk in response.iter_content(chunk_size=None):
        buffer += chunk
        while b"\n" in buffer:
            line, buffer = buffer.split(b"\n", 1)
            yield line.decode()


def test_xhr_streaming(kite):
    url = kite.session_url()
    r = kite.post(f"{url}/xhr_streaming", stream=True)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "application/javascript; charset=UTF-8"
    assert r.headers["Access-Control-Allow-Origin"] == "*"
    lines = _lines(r)
    assert next(lines) + "\n" == XHR_STREAMING_PRELUDE.decode()
    assert next(lines) == "o"
    assert kite.post(f"{url}/xhr_send", b'["s1","s2"]').status_code == 204
    assert next(lines) == 'a["s1","s2"]'
    assert next(lines) == "h"
    # Past streaming_limit bytes the response ends; the next one goes on without "o".
    big = "x" * 1500
    for _ in range(4):
        kite.post(f"{url}/xhr_send", json.dumps([big]).encode())
    received = [line for line in lines if line != "h"]
    assert received and all(line == f'a["{big}"]' for line in received)
    r.close()
    r = kite.post(f"{url}/xhr_streaming", stream=True)
    lines = _lines(r)
    assert next(lines) == "h" * 2048
    rest = [f'a["{big}"]'] * (4 - len(received))
    assert [next(lines) for _ in rest] == rest
    kite.post(f"{url}/xhr_send", b'["close"]')
    assert [line for line in lines if line != "h"] == [GO_AWAY]
    r.close()


def test_xhr_streaming_second_receiver_gets_2010(kite):
    url = kite.session_url()
    first = kite.post(f"{url}/xhr_streaming", stream=True)
    lines = _lines(first)
    next(lines), next(lines)  # prelude, o
    second = requests.post(f"{url}/xhr_streaming", timeout=5)
    assert second.text == XHR_STREAMING_PRELUDE.decode() + 'c[2010,"Another connection still open"]\n'
    first.close()


# -- under gunicorn ---------------------------------------------------------------------------------


def echo_forever(session):
    while (message := session.recv()) is not None:
        session.send(message)


def gunicorn_app():
    """App factory for the gunicorn test (``tests.test_sockjs_server:gunicorn_app()``)."""
    return SockJSServer(on_session=echo_forever)


def test_gunicorn_worker():
    pytest.importorskip("gunicorn")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    port = listener.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gunicorn",
            "-k",
            "kite.server.GeventKiteWorker",
            "-w",
            "1",
            "--graceful-timeout",
            "1",
            "-b",
            f"fd://{listener.fileno()}",
            "tests.test_sockjs_server:gunicorn_app()",
        ],
        pass_fds=[listener.fileno()],
        cwd=root,
        env={**os.environ, "PYTHONPATH": root},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        session = dial(f"http://127.0.0.1:{port}/kite", timeout=10)  # the listener queues us until it is up
        session.send("via gunicorn")
        assert session.recv() == "via gunicorn"
        session.close()
        xhr = dial(f"http://127.0.0.1:{port}/kite", transport="xhr_polling", timeout=10)
        xhr.send("polled")
        assert xhr.recv() == "polled"
        xhr.close()
    finally:
        listener.close()
        proc.send_signal(signal.SIGINT)  # quick shutdown
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_eventsource(kite):
    url = kite.session_url()
    r = kite.http.get(f"{url}/eventsource", stream=True, timeout=5)
    assert r.status_code == 200
    assert r.headers["Content-Type"] == "text/event-stream; charset=UTF-8"
    assert r.headers["Cache-Control"] == "no-store, no-cache, must-revalidate, max-age=0"
    chunks = r.iter_content(chunk_size=None)
    data = b""
    while b"data: o\r\n\r\n" not in data:
        data += next(chunks)
    assert data == b"\r\ndata: o\r\n\r\n"
    assert kite.post(f"{url}/xhr_send", b'["es"]').status_code == 204
    data = b""
    while not data.endswith(b"\r\n\r\n"):
        data += next(chunks)
    assert data == b'data: a["es"]\r\n\r\n'
    r.close()
