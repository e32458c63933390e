"""Calls through the reverse proxy (PROTOCOL.md §8.4), over every transport, and how it fails.

The backend kite registers through the in-process proxy with ``register_to_proxy``; the
caller finds it through Kontrol and dials the public URL with the Kontrol token.
"""

from __future__ import annotations

import socket

import gevent
import pytest
import requests

from kite import Auth, DisconnectError, GenericError, KiteError
from kite.proxy.registry import RESERVE_SECONDS
from kite.transport import wsclient
from kite.wire.wshandshake import HandshakeError
from tests.kontrol.conftest import wait_until
from tests.proxy.conftest import dial, find_through

#: name -> (URL suffix under the public URL, transport of the Python client)
TRANSPORTS = {
    "sockjs-websocket": ("", "websocket"),
    "raw-websocket": ("/websocket", "websocket"),
    "xhr-polling": ("", "xhr_polling"),
    "xhr-streaming": ("", "xhr_streaming"),
}


@pytest.fixture
def setup(proxy, kites):
    """``(proxy, backend, caller, found)``: the backend registered through the proxy and found in Kontrol."""
    backend = kites()
    registrar = gevent.spawn(backend.register_to_proxy)
    caller = kites("bob", "caller", serve=False)
    found = find_through(caller, proxy.public_base + "/proxy/")
    yield proxy, backend, caller, found
    registrar.kill()


def public_url(found, suffix: str) -> str:
    url = found.url + suffix
    return url.replace("http://", "ws://", 1) if suffix == "/websocket" else url


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_calls_results_errors_and_callbacks_through_the_proxy(setup, transport):
    proxy, backend, caller, found = setup
    suffix, kind = TRANSPORTS[transport]
    assert found.url == f"{proxy.public_base}/proxy/{backend.id}"
    with dial(caller, public_url(found, suffix), found, kind) as c:
        assert c.tell_with_timeout("square", 5, 7) == 49
        assert c.tell_with_timeout("whoami", 5) == backend.id
        with pytest.raises(GenericError) as err:
            c.tell_with_timeout("fail", 5)
        assert err.value.message == "boom"
        with pytest.raises(KiteError) as err:
            c.tell_with_timeout("nosuch", 5)
        assert err.value.type == "methodNotFound"
        heard: list[str] = []
        assert c.tell_with_timeout("callback", 5, heard.append) == "done"
        wait_until(lambda: heard == ["hello"], 5)
        # a callback each way: the backend calls ours, ours calls the one it passed
        assert c.tell_with_timeout("pingpong", 5, lambda msg, answer: answer(msg + "-pong")) == "ping-pong"
        # the handler calls its caller back (our "answer" is 7n) on the same proxied connection
        assert c.tell_with_timeout("ask", 5, 3) == 42
        results = [f.get(timeout=5) for f in [c.go("square", i) for i in range(20)]]
        assert results == [i * i for i in range(20)]


def test_an_unauthenticated_call_is_refused_by_the_backend(setup):
    proxy, backend, caller, found = setup
    with caller.new_client(found.url) as c:  # no token
        with pytest.raises(KiteError) as err:
            c.tell_with_timeout("square", 5, 2)
    assert err.value.type == "authenticationError"


def test_unknown_kite_ids_and_other_paths_are_404_not_an_upgrade(setup):
    proxy, backend, caller, found = setup
    base = proxy.public_base
    with pytest.raises(HandshakeError) as err:
        wsclient.connect(f"ws://127.0.0.1:{proxy.port}/proxy/no-such-kite/websocket", timeout=5)
    assert err.value.status_code == 404
    assert requests.get(f"{base}/proxy/no-such-kite/info", timeout=5).status_code == 404
    assert requests.get(f"{found.url}/admin/secrets", timeout=5).status_code == 404  # only SockJS paths
    info = requests.get(f"{found.url}/info", timeout=5)
    assert info.status_code == 200 and info.json()["websocket"] is True  # the backend's /kite/info
    assert requests.get(f"{base}/kite/info", timeout=5).json()["websocket"] is True  # the proxy's own


def test_the_backend_dying_closes_proxied_connections_promptly_and_forgets_it(setup):
    proxy, backend, caller, found = setup
    clients = [dial(caller, public_url(found, TRANSPORTS[t][0]), found, TRANSPORTS[t][1]) for t in TRANSPORTS]
    try:
        for c in clients:
            assert c.tell_with_timeout("square", 5, 3) == 9
        pending = [c.go("pingpong", lambda msg, answer: None) for c in clients]  # never answered
        backend.close()
        for p in pending:
            with gevent.Timeout(5):
                with pytest.raises(DisconnectError):
                    p.get()
        wait_until(lambda: proxy.registry.get(backend.id) is None, 5)
        wait_until(lambda: len(proxy.relays) == 0, 5)
        with pytest.raises(HandshakeError) as err:
            wsclient.connect(public_url(found, "/websocket"), timeout=5)
        assert err.value.status_code == 404
    finally:
        for c in clients:
            c.close()


def test_a_dead_backend_url_is_a_502_not_a_hang(proxy, kites):
    """A kite registers a URL nothing listens on: callers get 502 at once, over both kinds of forwarding."""
    with socket.socket() as s:  # a port that refuses connections
        s.bind(("127.0.0.1", 0))
        dead_url = f"http://127.0.0.1:{s.getsockname()[1]}/kite"
    backend = kites()
    registrar = gevent.spawn(backend.register_to_proxy, kite_url=dead_url)
    try:
        wait_until(lambda: proxy.registry.get(backend.id) is not None, 5)
        public = proxy.public_url(backend.id)
        with gevent.Timeout(5):
            with pytest.raises(HandshakeError) as err:
                wsclient.connect(public.replace("http://", "ws://") + "/websocket", timeout=5)
            assert err.value.status_code == 502
            assert requests.post(f"{public}/000/abcdef/xhr", timeout=5).status_code == 502
    finally:
        registrar.kill()


def test_another_user_cannot_take_a_registered_kite_id(proxy, kites, kontrol):
    alice = kites()
    registrar = gevent.spawn(alice.register_to_proxy)
    try:
        wait_until(lambda: proxy.registry.get(alice.id) is not None, 5)
        mallory = kites("mallory", "math")
        mallory.id = alice.id  # claims alice's kite id
        with mallory.new_client(proxy.url) as c:
            c.auth = Auth("kiteKey", mallory.kite_key())
            with pytest.raises(GenericError) as err:
                c.tell_with_timeout("register", 5, mallory.url)
            assert "registered by another user" in err.value.message
            assert proxy.registry.get(alice.id).username == "alice"
            alice.close()  # alice's entry goes; her id stays reserved to her for a while
            wait_until(lambda: proxy.registry.get(alice.id) is None, 5)
            with pytest.raises(GenericError) as err:
                c.tell_with_timeout("register", 5, mallory.url)
            assert "moments ago" in err.value.message
            assert RESERVE_SECONDS >= 60
    finally:
        registrar.kill()


def test_idle_proxied_websockets_are_closed(proxies, kites):
    proxy = proxies(idle_timeout=0.4)
    backend = kites()
    registrar = gevent.spawn(backend.register_to_proxy)
    try:
        wait_until(lambda: proxy.registry.get(backend.id) is not None, 5)
        caller = kites("alice", "caller", serve=False)
        raw = caller.new_client(proxy.public_url(backend.id).replace("http://", "ws://") + "/websocket")
        raw.auth = Auth("kiteKey", caller.kite_key())
        with raw:
            assert raw.tell_with_timeout("square", 5, 5) == 25
            wait_until(lambda: not raw.connected, 5, lambda: "the idle connection is still open")
    finally:
        registrar.kill()
