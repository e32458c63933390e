"""A real kite served over real sockets, called by real clients over every transport."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import gevent
import pytest
from gevent.event import Event

from kite import ArgumentError, DisconnectError, GenericError, Kite, MethodNotFoundError, testkeys
from kite.transport import wsclient
from tests.serving import serve_kite

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRANSPORTS = ["websocket", "xhr_polling", "xhr_streaming", "auto", "raw"]


def make_math(**config) -> Kite:
    k = Kite("math", "1.0.0")
    k.config.ip, k.config.port = "127.0.0.1", 0
    k.config.disable_authentication = True
    for key, value in config.items():
        setattr(k.config, key, value)
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("echo", lambda r: r.args[0])
    k.handle_func("callback", lambda r: (r.args.one().must_function()("hello"), "done")[1])
    # The handler calls back into its caller over the same connection and blocks on it.
    k.handle_func("ask", lambda r: r.client.tell("name", r.args.one().must_string()))
    k.handle_func("remote", lambda r: r.client.tell(r.args[0], *r.args[1:]))
    return k


@pytest.fixture
def math():
    k = serve_kite(make_math())
    yield k
    k.close()


def url_for(k: Kite, transport: str) -> tuple[str, str]:
    if transport == "raw":
        return f"ws://127.0.0.1:{k.port}/kite/websocket", "websocket"
    return k.url, transport


def client_for(k: Kite, transport: str, caller: Kite | None = None):
    url, kind = url_for(k, transport)
    caller = caller or Kite("caller", "1.0.0")
    c = caller.new_client(url, transport=kind)
    c.dial_timeout(5)
    return c


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_calls_over_every_transport(math, transport):
    caller = Kite("caller", "1.0.0")
    caller.handle_func("name", lambda r: "caller says " + r.args[0])
    got = []
    with client_for(math, transport, caller) as c:
        assert c.tell("square", 4) == 16
        assert c.tell("echo", {"nested": [1, "two", None]}) == {"nested": [1, "two", None]}
        assert c.tell("callback", got.append) == "done"
        assert c.tell("ask", "hi") == "caller says hi"
        futures = [c.go("square", i) for i in range(50)]
        assert [f.get(timeout=5) for f in futures] == [i * i for i in range(50)]
        with pytest.raises(MethodNotFoundError, match="Method not found: nosuch"):
            c.tell("nosuch")
        with pytest.raises(ArgumentError):
            c.tell("square", "four")
        assert c.tell("kite.ping") == "pong"
    assert got == ["hello"]


def test_large_message_round_trip(math):
    with client_for(math, "websocket") as c:
        blob = "x" * (2 * 1024 * 1024)
        assert c.tell("echo", blob) == blob


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_a_burst_of_large_messages_is_not_one_oversized_frame(math, transport):
    """20 concurrent 1 MiB answers (and arguments) are 20 MiB queued at once: more than the peer's
    16 MiB message limit if they left as one SockJS frame or xhr_send body (they would be refused
    with 1009 / 413); they leave in frames of at most 1 MiB of messages (wire.sockjs.BATCH_LIMIT)."""
    blob = "x" * (1 << 20)
    with client_for(math, transport) as c:
        answers = [c.go("echo", blob) for _ in range(20)]
        assert all(a.get(timeout=20) == blob for a in answers)
        assert c.tell("square", 3) == 9  # the connection is still up


def test_calls_on_dialed_connection_skip_auth_and_builtins_work(math):
    # The server calls the client's built-ins over the connection the client dialed:
    # no credentials are needed there (checklist 21), and kite.systemInfo has the Go keys (39).
    with client_for(math, "websocket") as c:
        info = c.tell("remote", "kite.systemInfo")
        assert {"state", "diskUsage", "diskTotal", "memoryUsage", "totalMemoryLimit", "homeDir", "uname"} <= set(info)
        assert info["state"] == "RUNNING"
        with pytest.raises(GenericError, match="no terminal"):
            c.tell("remote", "kite.prompt", "name? ")
        with pytest.raises(GenericError, match="no terminal"):
            c.tell("remote", "kite.getPass", "pass? ")
        assert c.tell("remote", "kite.print", "héllo\n") == 7


def test_heartbeat_calls_back_and_rejects_short_intervals(math):
    pings = []
    with client_for(math, "websocket") as c:
        # As Kontrol does: the callee is the client on its own dialed connection.
        math.handle_func("beat", lambda r: r.client.tell("kite.heartbeat", 1, lambda: pings.append(1)))
        assert c.tell("beat") is None
        gevent.sleep(1.3)
        assert len(pings) == 2
        math.handle_func("fast", lambda r: r.client.tell("kite.heartbeat", 0.5, lambda: None))
        with pytest.raises(ArgumentError, match="at least 1 second"):
            c.tell("fast")


def test_connect_disconnect_events(math):
    events = []
    math.on_connect(lambda cl: events.append("server-connect"))
    math.on_disconnect(lambda cl: events.append("server-disconnect"))
    math.on_first_request(lambda cl: events.append(f"first:{cl.kite.name}"))
    c = Kite("caller", "1.0.0").new_client(math.url)
    c.on_connect(lambda cl: events.append("client-connect"))
    gone = Event()
    c.on_disconnect(lambda cl: (events.append("client-disconnect"), gone.set()))
    c.dial()
    c.tell("square", 1)
    c.tell("square", 2)
    c.close()
    assert gone.wait(5)
    gevent.sleep(0.1)
    assert events.count("first:caller") == 1
    assert {"server-connect", "server-disconnect", "client-connect", "client-disconnect"} <= set(events)


def test_server_close_fails_pending_calls_and_dial_forever_reconnects():
    gate = Event()
    first = make_math()
    first.handle_func("block", lambda r: gate.wait())
    serve_kite(first)
    port = first.port
    c = Kite("caller", "1.0.0").new_client(first.url)
    c.dial_forever().wait(5)
    connects = []
    c.on_connect(lambda cl: connects.append(1))
    pending = c.go("block")
    gevent.sleep(0.05)
    first.close()
    with pytest.raises(DisconnectError):
        pending.get(timeout=5)
    second = serve_kite(make_math(port=port))
    try:
        with gevent.Timeout(10):
            while True:
                try:
                    assert c.tell_with_timeout("square", 2, 3) == 9
                    break
                except Exception:
                    gevent.sleep(0.1)
        assert connects
    finally:
        c.close()
        second.close()
        gate.set()


def test_bad_input_on_the_wire_never_hurts_other_clients(math):
    good = client_for(math, "websocket")
    stop = Event()
    results = []

    def keep_calling():
        i = 0
        while not stop.is_set():
            results.append(good.tell_with_timeout("square", 5, i) == i * i)
            i += 1
            gevent.sleep(0.001)

    worker = gevent.spawn(keep_calling)
    raw_url = f"ws://127.0.0.1:{math.port}/kite/websocket"
    junk_messages = [
        "not json",
        "[]",
        '{"method": null}',
        '{"method": "square", "arguments": 5}',
        '{"method": "square", "arguments": [1, 2, 3]}',
        '{"method": "square", "arguments": [{"withArgs": [2]}], "callbacks": {"x": [0]}}',
        '{"method": 12345, "arguments": []}',
        '{"method": "square", "arguments": [{"withArgs": [2], "responseCallback": "[Function]"}],'
        ' "callbacks": {"0": [0, "responseCallback", 7, 8]}}',
        "[" * 50000,
    ]
    ws = wsclient.connect(raw_url, timeout=5)
    for junk in junk_messages:
        ws.send_text(junk)
    # A well-formed call on the same connection still gets its answer afterwards.
    ws.send_text(
        json.dumps(
            {
                "method": "square",
                "arguments": [{"withArgs": [3], "responseCallback": "[Function]"}],
                "callbacks": {"7": [0, "responseCallback"]},
            }
        )
    )
    reply = json.loads(ws.recv_text())
    assert reply == {"method": 7, "arguments": [{"error": None, "result": 9}], "callbacks": {}}
    assert type(reply["arguments"][0]["result"]) is int  # written like Go: 9, not 9.0
    ws.close()

    # Oversized and garbage frames end only the offending connection.
    small = serve_kite(make_math(max_message_size=1024))
    try:
        ws = wsclient.connect(f"ws://127.0.0.1:{small.port}/kite/websocket", timeout=5)
        ws.send_text("x" * 4096)
        assert ws.recv_text() is None and ws.close_code == 1009
    finally:
        small.close()
    sock = socket.create_connection(("127.0.0.1", math.port))
    sock.sendall(os.urandom(1024 * 1024))
    sock.close()
    gevent.sleep(0.2)
    stop.set()
    worker.join(5)
    good.close()
    assert results and all(results)


def square_call(x: int, cb_id: int) -> str:
    return json.dumps({"method": "square", "arguments": [{"withArgs": [x], "responseCallback": "[Function]"}],
                       "callbacks": {str(cb_id): [0, "responseCallback"]}})


def test_replies_to_calls_read_together_leave_in_one_frame(math):
    # One SockJS frame with three calls: the kite runs them as it reads them and
    # writes the three replies as one a[...] frame before it reads again.
    ws = wsclient.connect(f"ws://127.0.0.1:{math.port}/kite/0/session/websocket", timeout=5)
    assert ws.recv_text() == "o"
    ws.send_text(json.dumps([square_call(i, 100 + i) for i in range(3)]))
    frame = ws.recv_text()
    assert frame.startswith("a[")
    replies = [json.loads(m) for m in json.loads(frame[1:])]
    assert [(r["method"], r["arguments"][0]["result"]) for r in replies] == [(100, 0), (101, 1), (102, 4)]
    ws.close()


def test_a_handler_blocked_on_its_caller_does_not_stall_the_connection(math):
    # Each "ask" runs on the greenlet that read it and blocks on a call back into
    # its caller; reading goes on in another greenlet every time, so the square
    # calls and the callers' own answers get through while all the asks wait.
    gate = Event()

    def name(r):
        gate.wait(5)
        return "caller-" + r.args.one().must_string()

    caller = Kite("caller", "1.0.0")
    caller.handle_func("name", name)
    c = client_for(math, "websocket", caller)
    asks = [c.go("ask", str(i)) for i in range(10)]
    assert [c.tell_with_timeout("square", 5, i) for i in range(5)] == [0, 1, 4, 9, 16]
    assert not any(a.ready() for a in asks)
    gate.set()
    assert [a.get(timeout=5) for a in asks] == [f"caller-{i}" for i in range(10)]
    c.close()


def test_ipv6():
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        s = socket.socket(socket.AF_INET6)
        s.bind(("::1", 0))
        s.close()
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    k = serve_kite(make_math(ip="::1"))
    try:
        assert k.url.startswith("http://[::1]:")
        with Kite("caller", "1.0.0").new_client(k.url) as c:
            assert c.tell("square", 6) == 36
    finally:
        k.close()


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory):
    cert_pem, key_pem = testkeys.tls_cert_pem(), testkeys.tls_key_pem()
    cert_file = tmp_path_factory.mktemp("tls") / "cert.pem"
    cert_file.write_text(cert_pem)
    return cert_pem, key_pem, str(cert_file)


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling"])
def test_tls(tls_files, transport):
    cert_pem, key_pem, cert_file = tls_files
    k = make_math()
    k.use_tls(cert_pem, key_pem)
    serve_kite(k)
    try:
        assert k.url.startswith("https://")
        c = Kite("caller", "1.0.0").new_client(k.url, transport=transport)
        c.verify = cert_file
        with c:
            assert c.tell("square", 7) == 49
        untrusted = Kite("caller", "1.0.0").new_client(k.url, transport=transport)
        with pytest.raises(ConnectionError):
            untrusted.dial_timeout(5)
    finally:
        k.close()


def run_script(code: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=ROOT,
    )


def test_blocking_script_without_monkey_patching(math):
    proc = run_script(
        f"""
        import socket, threading
        from kite import Kite
        assert socket.socket.__module__ == "socket", "must not be monkey-patched"
        with Kite("script", "1.0.0").new_client("{math.url}") as c:
            print(c.tell("square", 9), c.go("square", 3).get(timeout=5))
        with Kite("script", "1.0.0").new_client("ws://127.0.0.1:{math.port}/kite/websocket") as c:
            print(c.tell_with_timeout("square", 5, 2))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["81", "9", "4"]


def test_quick_start_example_runs():
    proc = subprocess.run(
        [sys.executable, "-m", "examples.math.run"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert "square(4) = 16" in proc.stdout
