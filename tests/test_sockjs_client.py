"""kite.transport.sockjs.client: the Go-style dialer over every transport, against real servers."""

import os
import re
import socket
import subprocess
import sys
import textwrap
import time

import gevent
import pytest
from gevent.event import Event
from gevent.pywsgi import WSGIServer

from kite.transport.session import SessionClosed
from kite.transport.sockjs import client as sockjs_client
from kite.transport.sockjs.client import DialError, DialTimeoutError, dial
from kite.transport.sockjs.server import SockJSServer
from kite.transport.websocket import WebSocket
from tests.serving import Echo, serve

HEARTBEAT = 0.3
DISCONNECT = 0.5
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def kite():
    echo = Echo()
    app = SockJSServer(on_session=echo, heartbeat_interval=HEARTBEAT, disconnect_delay=DISCONNECT)
    with serve(app) as server:
        echo.base = f"http://127.0.0.1:{server.server_port}/kite"
        echo.port = server.server_port
        yield echo


class Scripted:
    """A fake SockJS server at the WebSocket level: records what it got, sends scripted frames."""

    def __init__(self, frames=("o",)):
        self.frames = list(frames)
        self.received = []
        self.environ = {}
        self.done = Event()

    def __call__(self, environ, start_response):
        ws = WebSocket.from_environ(environ)
        self.environ = dict(environ)
        for frame in self.frames:
            ws.send_text(frame)
        while (text := ws.recv_text()) is not None:
            self.received.append(text)
            self.done.set()
        ws.close()
        ws.wait_closed()
        return []


def roundtrip(session, messages):
    for message in messages:
        session.send(message)
    return [session.recv() for _ in messages]


# -- transports -------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling", "xhr", "xhr_streaming", "auto"])
def test_echo_over_each_transport(kite, transport):
    session = dial(kite.base, transport=transport, timeout=5)
    messages = ['{"method":"square","arguments":[4]}', "é€😀", "x" * 20000, ""]
    assert roundtrip(session, messages) == messages
    assert not session.closed
    session.close()
    assert session.closed
    assert session.recv() is None
    with pytest.raises(SessionClosed):
        session.send("late")


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling", "xhr_streaming"])
def test_server_close_ends_session(kite, transport):
    session = dial(kite.base, transport=transport, timeout=5)
    session.send("close")
    assert session.recv() is None
    assert session.closed
    assert (session.close_code, session.close_reason) == (3000, "Go away!")


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling", "xhr_streaming"])
def test_messages_before_server_close_are_delivered(kite, transport):
    session = dial(kite.base, transport=transport, timeout=5)
    session.send("burst")
    gevent.sleep(0.1)  # the receiver has seen the close frame by now
    assert [session.recv(), session.recv(), session.recv()] == ["one", "two", None]
    assert session.close_code == 3000


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling", "xhr_streaming"])
def test_close_flushes_queued_sends(kite, transport):
    session = dial(kite.base, transport=transport, timeout=5)
    session.send("last")
    session.send("words")
    session.close()
    deadline = time.monotonic() + 2
    while kite.received != ["last", "words"] and time.monotonic() < deadline:
        gevent.sleep(0.01)
    assert kite.received == ["last", "words"]


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling", "xhr_streaming"])
def test_heartbeats_are_ignored(kite, transport):
    session = dial(kite.base, transport=transport, timeout=5)
    gevent.sleep(HEARTBEAT * 2.5)  # several h frames go by
    assert roundtrip(session, ["after heartbeats"]) == ["after heartbeats"]
    session.close()


def test_client_close_ends_server_session(kite):
    session = dial(kite.base, timeout=5)
    assert roundtrip(session, ["x"]) == ["x"]
    session.close()
    assert kite.any_ended.wait(2)


def test_xhr_client_gone_is_reaped(kite):
    session = dial(kite.base, transport="xhr_polling", timeout=5)
    session.close()
    assert kite.any_ended.wait(DISCONNECT + 2)


def test_raw_websocket_url(kite):
    session = dial(f"ws://127.0.0.1:{kite.port}/kite/websocket", transport="xhr_polling", timeout=5)
    assert roundtrip(session, ["raw1", "raw2"]) == ["raw1", "raw2"]
    session.send("close")
    assert session.recv() is None


def test_auto_falls_back_to_xhr_when_websocket_is_refused():
    # Plain pywsgi without gevent-websocket's handler: the upgrade is refused with 400.
    echo = Echo()
    app = SockJSServer(on_session=echo, heartbeat_interval=HEARTBEAT, disconnect_delay=DISCONNECT)
    with serve(app, server_class=WSGIServer) as server:
        base = f"http://127.0.0.1:{server.server_port}/kite"
        with pytest.raises(DialError) as info:
            dial(base, transport="websocket", timeout=5)
        assert info.value.status_code == 400
        assert base in str(info.value)
        session = dial(base, transport="auto", timeout=5)
        assert type(session).__name__ == "XhrClientSession"
        assert roundtrip(session, ["fell back"]) == ["fell back"]
        session.close()


def test_auto_prefers_websocket(kite):
    session = dial(kite.base, transport="auto", timeout=5)
    assert type(session).__name__ == "WebSocketClientSession"
    session.close()


# -- what goes on the wire -----------------------------------------------------------------------


def test_websocket_url_origin_and_coalesced_sends():
    app = Scripted()
    with serve(app) as server:
        session = dial(f"http://127.0.0.1:{server.server_port}/kite", timeout=5)
        session.send("m1")
        session.send("m2")  # same loop turn: one payload
        assert app.done.wait(2)
        gevent.sleep(0.05)
        assert app.received == ['["m1","m2"]']
        assert re.fullmatch(r"/kite/[1-9]\d\d/[0-9a-f]{20}/websocket", app.environ["PATH_INFO"])
        assert app.environ["HTTP_ORIGIN"] == f"http://127.0.0.1:{server.server_port}"
        session.close()


def test_ws_urls_follow_go_rules():
    ws_url, origin = sockjs_client._ws_urls("http://math.example.com/kite")
    assert re.fullmatch(r"ws://math\.example\.com:80/kite/\d{3}/[0-9a-f]{20}/websocket", ws_url)
    assert origin == "http://math.example.com:80"
    ws_url, origin = sockjs_client._ws_urls("https://math.example.com/kite/?token=1")
    assert re.fullmatch(r"wss://math\.example\.com:443/kite/\d{3}/[0-9a-f]{20}/websocket\?token=1", ws_url)
    assert origin == "https://math.example.com:443"
    ws_url, origin = sockjs_client._ws_urls("http://[::1]:3636/kite")
    assert ws_url.startswith("ws://[::1]:3636/kite/")
    assert origin == "http://[::1]:3636"


def test_scripted_server_frames():
    app = Scripted(["o", "h", 'a["one","two"]', "h", 'm"single"', 'c[3001,"done here"]', 'a["after close"]'])
    with serve(app) as server:
        session = dial(f"http://127.0.0.1:{server.server_port}/kite", timeout=5)
        assert [session.recv(), session.recv(), session.recv()] == ["one", "two", "single"]
        assert session.recv() is None
        assert (session.close_code, session.close_reason) == (3001, "done here")
        assert session.recv() is None


def test_garbage_frame_from_server_ends_session():
    app = Scripted(["o", 'a["fine"]', "zzz"])
    with serve(app) as server:
        session = dial(f"http://127.0.0.1:{server.server_port}/kite", timeout=5)
        assert session.recv() == "fine"
        assert session.recv() is None
        assert session.closed


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling", "xhr_streaming", "auto"])
def test_connection_refused(transport, dead_port):
    url = f"http://127.0.0.1:{dead_port}/kite"
    with pytest.raises(DialError) as info:
        dial(url, transport=transport, timeout=2)
    assert url in str(info.value)
    assert isinstance(info.value, ConnectionError)


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling"])
def test_dial_timeout(transport):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)  # TCP connects, nobody answers
    try:
        with pytest.raises(DialTimeoutError):
            dial(f"http://127.0.0.1:{listener.getsockname()[1]}/kite", transport=transport, timeout=0.3)
    finally:
        listener.close()


def test_bad_arguments():
    with pytest.raises(DialError):
        dial("ftp://127.0.0.1/kite")
    with pytest.raises(ValueError):
        dial("http://127.0.0.1/kite", transport="carrier-pigeon")


@pytest.mark.parametrize("transport", ["xhr_polling", "xhr_streaming"])
@pytest.mark.parametrize("body", [b"", b"hello\n", b'c[3000,"Go away!"]\n'])
def test_xhr_dial_needs_open_frame(transport, body):
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
        return [body]

    with serve(app, server_class=WSGIServer) as server:
        with pytest.raises(DialError, match="expected SockJS open frame"):
            dial(f"http://127.0.0.1:{server.server_port}/kite", transport=transport, timeout=5)


def test_xhr_dial_on_non_sockjs_path_fails(kite):
    with pytest.raises(DialError) as info:
        dial(kite.base.replace("/kite", "/other"), transport="xhr_polling", timeout=5)
    assert info.value.status_code == 404


# -- without monkey patching -------------------------------------------------------------------


def test_websocket_client_works_without_monkey_patching(kite):
    script = textwrap.dedent(
        """
        import sys
        from gevent import monkey
        from kite.transport.sockjs.client import dial

        for url in sys.argv[1:]:
            session = dial(url, timeout=5)
            session.send("unpatched")
            session.send("process")
            print(session.recv(), session.recv())
            session.close()
        assert not monkey.is_module_patched("socket")
        print("not patched")
        """
    )
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    urls = [kite.base, f"ws://127.0.0.1:{kite.port}/kite/websocket"]
    # The server lives in this (patched) process, so the patched subprocess module keeps it serving.
    proc = subprocess.run([sys.executable, "-c", script, *urls], capture_output=True, env=env, cwd=ROOT, timeout=20)
    assert proc.returncode == 0, proc.stderr.decode()
    assert proc.stdout.decode().split("\n")[:3] == ["unpatched process", "unpatched process", "not patched"]
