"""HTTP edges on the kite's server (gevent pywsgi with :class:`KiteWebSocketHandler`), on every
kind of route: SockJS under ``/kite``, the raw WebSocket, ``/kite/info``, Kontrol's ``/register``
and ``/heartbeat``, and the static files of the browser example.

Slowloris peers are shed after the header timeout while normal clients keep their latency; a
huge header block is answered 431; endless or lying bodies end in bounded time and size; no path
reaches a file the kite does not serve. The limits are short here (config fields) to keep it quick.
"""

from __future__ import annotations

import json
import socket
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import requests

from kite import Config, Kite
from kite.transport import wsgi
from kontrol import Kontrol
from tests.serving import running_kontrol, serve_kite

#: Header and body timeouts of the servers under test, seconds (the defaults are 10 s and 60 s).
HEADER_TIMEOUT = 1.0
BODY_TIMEOUT = 1.5
#: Largest message of the kite under test (the xhr_send body cap).
LIMIT = 64 * 1024
#: Extra seconds allowed on top of a timeout before a test calls it missed (a loaded machine).
MARGIN = 3.0
#: Slowloris connections opened at once (half trickle header bytes, half send nothing).
SLOWLORIS_CONNECTIONS = 200
#: Seconds between two header bytes of a slowloris connection.
TRICKLE_INTERVAL = 0.3


def configure(config: Config) -> Config:
    config.ip, config.port = "127.0.0.1", 0
    config.header_timeout, config.body_timeout = HEADER_TIMEOUT, BODY_TIMEOUT
    return config


@pytest.fixture(scope="module")
def kite() -> Iterator[Kite]:
    k = Kite("edges", "1.0.0", configure(Config()))
    k.config.disable_authentication = True
    k.config.max_message_size = LIMIT
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    serve_kite(k)
    yield k
    k.close()


@pytest.fixture(scope="module")
def kontrol() -> Iterator[Kontrol]:
    config = configure(Config())
    config.username = "koding"
    k = Kontrol(config, "memory")
    with running_kontrol(k):
        yield k


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kite]:
    """The browser example's kite, serving its page, page.js and a kite.js bundle (a stand-in file)."""
    from examples.browser.server import BrowserDemo

    bundle = tmp_path_factory.mktemp("bundle") / "bundle.js"
    bundle.write_text("window.Kite = 'stand-in';\n")
    demo = BrowserDemo(bundle, configure(Config()))
    serve_kite(demo.kite)
    yield demo.kite
    demo.kite.close()


def exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[bytes, bool]:
    """Send ``request`` on a fresh connection; return what came back and whether the server closed
    the connection (EOF or reset) within ``timeout``."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    answer = b""
    try:
        try:
            sock.sendall(request)
        except OSError:
            pass  # the server may refuse before reading it all
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                return answer, False
            except OSError:
                return answer, True
            if not data:
                return answer, True
            answer += data
        return answer, False
    finally:
        sock.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/") else 0


# -- slowloris ----------------------------------------------------------------------------------------


def p99(samples: list[float]) -> float:
    return statistics.quantiles(samples, n=100)[98] if len(samples) > 1 else samples[0]


def normal_latencies(kite: Kite, seconds: float) -> list[float]:
    """Round trips of normal clients for ``seconds``: a kite call over WebSocket, then a GET of /kite/info
    on a kept-alive HTTP connection, in turns."""
    caller = Kite("caller", "1.0.0").new_client(f"ws://127.0.0.1:{kite.port}/kite/websocket")
    caller.dial_timeout(5)
    http = requests.Session()
    samples = []
    try:
        end = time.monotonic() + seconds
        i = 0
        while time.monotonic() < end:
            start = time.monotonic()
            if i % 2:
                assert http.get(f"http://127.0.0.1:{kite.port}/kite/info", timeout=5).status_code == 200
            else:
                assert caller.tell_with_timeout("square", 5, i) == i * i
            samples.append(time.monotonic() - start)
            i += 1
            gevent.sleep(0.005)
    finally:
        caller.close()
        http.close()
    return samples


def slowloris(port: int, trickle: bool, shed: list[tuple[float, bytes]]) -> None:
    """One slowloris connection: a request line, then a header byte every TRICKLE_INTERVAL (or
    nothing at all); records after how many seconds the server dropped it, and what it answered."""
    start = time.monotonic()
    sock = socket.create_connection(("127.0.0.1", port))
    sock.settimeout(TRICKLE_INTERVAL)
    answer = b""
    try:
        if trickle:
            sock.sendall(b"GET /kite/info HTTP/1.1\r\n")
        header = b"X-Slow: " + b"a" * 10_000
        for i in range(10_000):
            if trickle:
                sock.sendall(header[i : i + 1])
            try:
                data = sock.recv(4096)
            except TimeoutError:
                continue
            if not data:
                break
            answer += data  # the 408: read on until EOF
    except OSError:
        pass
    finally:
        shed.append((time.monotonic() - start, answer))
        sock.close()


def test_slowloris_is_shed_and_normal_clients_keep_their_latency(kite: Kite, capsys: pytest.CaptureFixture) -> None:
    before = normal_latencies(kite, 1.0)
    shed: list[tuple[float, bytes]] = []
    attackers = [gevent.spawn(slowloris, kite.port, i % 2 == 0, shed) for i in range(SLOWLORIS_CONNECTIONS)]
    gevent.sleep(0.2)  # all connected
    during = normal_latencies(kite, HEADER_TIMEOUT + 0.5)  # until after they are shed
    gevent.joinall(attackers, timeout=HEADER_TIMEOUT + MARGIN)
    for g in attackers:
        g.kill(block=False)
    with capsys.disabled():
        print(f"\nslowloris: {SLOWLORIS_CONNECTIONS} connections; normal calls p99 before "
              f"{p99(before) * 1000:.1f} ms ({len(before)} calls), during {p99(during) * 1000:.1f} ms "
              f"({len(during)} calls); shed after {min(t for t, _ in shed):.2f}-{max(t for t, _ in shed):.2f} s")
    assert len(shed) == SLOWLORIS_CONNECTIONS, "some slowloris connections were never dropped"
    assert max(seconds for seconds, _ in shed) < HEADER_TIMEOUT + MARGIN
    # Those that trickled a head were told (408); the silent ones were just dropped.
    answers = sorted({status_of(answer) for _, answer in shed})
    assert answers == [0, 408] and sum(status_of(a) == 408 for _, a in shed) == SLOWLORIS_CONNECTIONS // 2
    assert p99(during) < 0.5  # a few ms on an idle machine; the margin is for a loaded one


def test_an_idle_kept_alive_connection_is_closed_after_the_keepalive_timeout() -> None:
    with_short_keepalive = wsgi.make_server(lambda e, s: (s("200 OK", [("Content-Length", "2")]), [b"ok"])[1],
                                            keepalive_timeout=0.5)
    with_short_keepalive.start()
    try:
        request = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
        start = time.monotonic()
        answer, closed = exchange(with_short_keepalive.server_port, request)
        assert answer.startswith(b"HTTP/1.1 200") and closed
        assert 0.4 < time.monotonic() - start < 0.5 + MARGIN
    finally:
        with_short_keepalive.stop(timeout=1)


# -- header sizes -------------------------------------------------------------------------------------

ROUTES = ["GET /kite/info", "GET /kite/websocket", "GET /kite/000/sess/websocket", "POST /kite/000/sess/xhr_send",
          "GET /heartbeat?id=x", "POST /register", "GET /page.js"]


def port_for(route: str, kite: Kite, kontrol: Kontrol, browser: Kite) -> int:
    if route.split()[1].startswith(("/heartbeat", "/register")):
        return kontrol.kite.port
    if route.endswith(".js"):
        return browser.port
    return kite.port


def head(route: str, *extra: bytes) -> bytes:
    upgrade = b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n" \
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n" if "websocket" in route else b""
    return route.encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n" + upgrade + b"".join(extra)


def assert_still_serving(kite: Kite) -> None:
    assert requests.get(f"http://127.0.0.1:{kite.port}/kite/info", timeout=5).status_code == 200


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("shape", ["1MB-line", "many-lines", "200-headers"])
def test_huge_headers_are_refused_with_431_and_the_connection_closed(
    kite: Kite, kontrol: Kontrol, browser: Kite, route: str, shape: str
) -> None:
    port = port_for(route, kite, kontrol, browser)
    if shape == "1MB-line":
        extra = [b"X-Huge: " + b"h" * (1 << 20) + b"\r\n"]
    elif shape == "many-lines":
        extra = [b"X-Big-%d: %s\r\n" % (i, b"b" * 8000) for i in range(20)]  # 160 KB in lines under 64 KiB
    else:
        extra = [b"X-H%d: v\r\n" % i for i in range(200)]  # over http.client's 100 lines
    answer, closed = exchange(port, head(route, *extra) + b"\r\n")
    assert closed
    # The 431 can be lost to a reset when the rest of a 1 MB line is still unread: then nothing came.
    assert status_of(answer) == 431 or (answer == b"" and shape == "1MB-line")
    assert_still_serving(kite)


def test_a_long_request_line_is_refused_with_414(kite: Kite) -> None:
    answer, closed = exchange(kite.port, b"GET /kite/info?" + b"q" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert closed and status_of(answer) == 414


def test_headers_under_the_limit_are_fine(kite: Kite) -> None:
    extra = [b"X-Big-%d: %s\r\n" % (i, b"b" * 1000) for i in range(30)]
    answer, _ = exchange(kite.port, head("GET /kite/info", *extra, b"Connection: close\r\n") + b"\r\n")
    assert status_of(answer) == 200


# -- bodies -------------------------------------------------------------------------------------------

BODY_ROUTES = ["POST /kite/000/sess/xhr_send", "POST /register"]


def chunked_sender(sock: socket.socket, chunk: bytes, interval: float) -> None:
    try:
        while True:
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            gevent.sleep(interval)
    except OSError:
        pass


def endless(port: int, route: str, chunk: bytes, interval: float) -> tuple[bytes, bool, float]:
    """A chunked body that never ends; returns the answer, whether the server closed, and after how long."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=BODY_TIMEOUT + MARGIN)
    start = time.monotonic()
    sock.sendall(head(route, b"Transfer-Encoding: chunked\r\nContent-Type: text/plain\r\n") + b"\r\n")
    sender = gevent.spawn(chunked_sender, sock, chunk, interval)
    answer, closed = b"", False
    try:
        while True:
            try:
                data = sock.recv(65536)
            except TimeoutError:
                break
            except OSError:
                closed = True
                break
            if not data:
                closed = True
                break
            answer += data
    finally:
        sender.kill()
        sock.close()
    return answer, closed, time.monotonic() - start


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_an_endless_trickled_chunked_body_ends_at_the_body_timeout(
    kite: Kite, kontrol: Kontrol, browser: Kite, route: str
) -> None:
    answer, closed, took = endless(port_for(route, kite, kontrol, browser), route, b"x" * 100, 0.05)
    assert closed and took < BODY_TIMEOUT + MARGIN
    assert status_of(answer) == 400
    assert_still_serving(kite)


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_an_endless_fast_chunked_body_is_cut_at_the_size_limit(
    kite: Kite, kontrol: Kontrol, browser: Kite, route: str
) -> None:
    answer, closed, took = endless(port_for(route, kite, kontrol, browser), route, b"x" * 16384, 0)
    assert closed and took < BODY_TIMEOUT + MARGIN
    # xhr_send: 413 over the message limit; /register: 400 (a body over 64 KiB is not a registration).
    assert status_of(answer) == (413 if "xhr_send" in route else 400)
    assert_still_serving(kite)


@pytest.mark.parametrize("route", BODY_ROUTES)
def test_a_content_length_longer_than_the_body_ends_at_the_body_timeout(
    kite: Kite, kontrol: Kontrol, browser: Kite, route: str
) -> None:
    start = time.monotonic()
    answer, closed = exchange(port_for(route, kite, kontrol, browser),
                              head(route, b"Content-Length: 1000\r\n") + b"\r\n" + b'["only ten"',
                              timeout=BODY_TIMEOUT + MARGIN)
    assert closed and status_of(answer) == 400
    assert time.monotonic() - start < BODY_TIMEOUT + MARGIN


def test_a_huge_content_length_is_refused_without_reading_it_all(kite: Kite) -> None:
    route = "POST /kite/000/sess/xhr_send"
    request = head(route, b"Content-Length: 1000000000000\r\n") + b"\r\n" + b"x" * (LIMIT + 1)
    answer, closed = exchange(kite.port, request)
    assert closed and status_of(answer) == 413


def test_a_content_length_shorter_than_the_body_leaves_garbage_that_is_refused(kontrol: Kontrol) -> None:
    request = head("POST /register", b"Content-Length: 2\r\n") + b"\r\n" + b"{}GARBAGE NOT HTTP\r\n\r\n"
    answer, closed = exchange(kontrol.kite.port, request)
    assert closed
    assert answer.count(b"HTTP/1.1 400") == 2  # the 2-byte registration, then the "request" after it


@pytest.mark.parametrize("length", [b"abc", b"-1", b"1, 2", b"99999999999999999999999999"])
def test_a_malformed_content_length_is_refused(kite: Kite, length: bytes) -> None:
    answer, closed = exchange(kite.port, head("POST /kite/000/sess/xhr_send", b"Content-Length: " + length + b"\r\n")
                              + b"\r\n[]")
    assert closed and status_of(answer) == 400


def test_a_body_read_to_its_end_keeps_the_connection_alive(kite: Kite) -> None:
    with requests.Session() as http:
        for _ in range(3):
            response = http.post(f"http://127.0.0.1:{kite.port}/kite/000/nosuchsession/xhr_send", data=b'["x"]',
                                 timeout=5)
            assert response.status_code == 404


# -- path traversal -----------------------------------------------------------------------------------

TRAVERSALS = [
    "/../../../../etc/passwd",
    "/kite/../../../../etc/passwd",
    "/kite/..%2f..%2f..%2f..%2fetc%2fpasswd",
    "/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
    "/kite/%2e%2e/%2e%2e/setup.cfg",
    "/page.js/../../../../setup.cfg",
    "/page.js%2f..%2f..%2f..%2fsetup.cfg",
    "/static/../server.py",
    "/static/index.html",
    "/kite.js/..%5c..%5c..%5csetup.cfg",
    "/..%252f..%252fsetup.cfg",
    "/%c0%ae%c0%ae/%c0%ae%c0%ae/setup.cfg",
    "/register/../../../etc/passwd",
    "/heartbeat/..%2f..%2fsetup.cfg?id=x",
    "//etc/passwd",
    "/kite/info/../../../etc/passwd",
]
#: Bytes of files outside what the kites serve: they must appear in no answer.
SECRETS = [b"root:x:0:0", b"[tool:pytest]", b"from kite import Config, Kite, Request"]


@pytest.mark.parametrize("path", TRAVERSALS)
def test_no_path_reaches_a_file_the_kite_does_not_serve(kite: Kite, kontrol: Kontrol, browser: Kite, path: str) -> None:
    served = {(Path(__file__).resolve().parents[2] / "examples" / "browser" / "static" / name).read_bytes()
              for name in ("index.html", "page.js")}
    for port in (kite.port, kontrol.kite.port, browser.port):
        for target in (path, f"http://127.0.0.1:{port}{path}", path.lstrip("/")):
            answer, _ = exchange(port, f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                                 .encode())
            status = status_of(answer)
            body = answer.partition(b"\r\n\r\n")[2]
            assert status in (400, 404, 405) or (status == 200 and body in served), (port, target, answer[:200])
            assert not any(secret in answer for secret in SECRETS)


def test_the_browser_example_still_serves_its_files(browser: Kite) -> None:
    for name, marker in (("/page.js", b""), ("/kite.js", b"stand-in"), ("/config.json", b"kontrol")):
        response = requests.get(f"http://127.0.0.1:{browser.port}{name}", timeout=5)
        assert response.status_code == 200 and marker in response.content
    assert json.loads(requests.get(f"http://127.0.0.1:{browser.port}/config.json", timeout=5).content) == {
        "kontrol": None}
