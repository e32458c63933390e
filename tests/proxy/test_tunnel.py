"""The tunnel proxy in this process (PROTOCOL.md §8.5): calls through it over every transport,
authentication through the tunnel, Go's XHR URL form, limits, tokens and ``kite.tunnel``.

A real Kontrol on memory storage; the tunnel proxy and the kites run here on 127.0.0.1. The
private kite behind the tunnel never listens: both of its connections go out.
"""

from __future__ import annotations

import json
import re
import time

import gevent
import jwt as pyjwt
import pytest
import requests
from gevent.event import AsyncResult

from kite import Auth, AuthenticationError, DisconnectError, GenericError, KiteError
from kite.kontrolclient.proxyclient import sockjs_base_url
from kite.proxy.tunnel import TunnelProxy, kite_id_of, route_go_xhr
from kite.proxy.tunneltoken import TunnelTokens
from kite.transport.sockjs.client import DialError, dial_sockjs_websocket
from tests.kontrol.conftest import wait_until
from tests.proxy.conftest import USER, dial, find_through, listed_urls, raw_websocket_url
from tests.proxy.methods import add_methods

TRANSPORTS = ("websocket", "xhr_polling", "xhr_streaming", "raw")


@pytest.fixture
def tunnelled(tunnel_proxy: TunnelProxy, kites):
    """``(proxy, backend, caller, found)``: a private kite of alice registered through the tunnel
    proxy (it does not listen), a caller kite of bob, and what Kontrol gave bob for it."""
    backend = add_methods(kites(serve=False))
    backend.handle_func("caller", lambda r: [r.username, r.client.kite.name])
    registrar = gevent.spawn(backend.register_to_tunnel)
    caller = kites("bob", "caller", serve=False)
    found = find_through(caller, f"http://127.0.0.1:{tunnel_proxy.port}/proxy?kiteID=")
    try:
        yield tunnel_proxy, backend, caller, found
    finally:
        registrar.kill()


def dial_through(caller, found, transport: str):
    """A dialed client of ``found`` (Kontrol's token) over ``transport`` (``raw``: a raw WebSocket)."""
    if transport == "raw":
        return dial(caller, raw_websocket_url(found.url), found)
    return dial(caller, found.url, found, transport)


def test_the_kite_is_found_under_the_tunnel_url(tunnelled):
    proxy, backend, caller, found = tunnelled
    assert found.url == f"http://127.0.0.1:{proxy.port}/proxy?kiteID={backend.id}"
    assert found.kite.id == backend.id and found.auth.type == "token"
    assert listed_urls(caller) == [found.url]
    assert backend._server is None  # it never listened
    entry = proxy.registry.get(backend.id)
    assert (entry.username, entry.url) == (USER, "")


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_calls_results_errors_and_callbacks_both_ways(tunnelled, transport):
    proxy, backend, caller, found = tunnelled
    with dial_through(caller, found, transport) as c:
        assert c.tell_with_timeout("square", 5, 7) == 49
        with pytest.raises(GenericError, match="boom"):
            c.tell_with_timeout("fail", 5)
        heard: AsyncResult[str] = AsyncResult()
        assert c.tell_with_timeout("callback", 5, heard.set) == "done"
        assert heard.get(timeout=5) == "hello"
        assert c.tell_with_timeout("pingpong", 5, lambda msg, answer: answer(msg + "-pong")) == "ping-pong"
        assert c.tell_with_timeout("ask", 5, 3) == 42  # the handler calls the caller's answer(3) back
        assert c.tell_with_timeout("caller", 5) == ["bob", "caller"]  # who the kite verified
        assert len(proxy.relays) == 1
    if not transport.startswith("xhr"):  # an XHR session ends when the server notices that nobody polls
        wait_until(lambda: len(proxy.relays) == 0, 5, lambda: "the tunnel outlived its caller")


def test_many_tunnels_to_one_kite_at_once(tunnelled):
    proxy, backend, caller, found = tunnelled
    clients = [dial_through(caller, found, t) for t in TRANSPORTS * 3]
    try:
        jobs = [gevent.spawn(c.tell_with_timeout, "square", 10, i) for i, c in enumerate(clients)]
        gevent.joinall(jobs, timeout=15, raise_error=True)
        assert [j.value for j in jobs] == [i * i for i in range(len(clients))]
        assert len(proxy.relays) == len(clients)
    finally:
        for c in clients:
            c.close()


# -- authentication holds through the tunnel --------------------------------------------------


def expired_like(kontrol, token: str) -> str:
    """``token``'s claims, expired an hour ago, signed by Kontrol's key: a real but stale token."""
    claims = pyjwt.decode(token, options={"verify_signature": False})
    now = int(time.time())
    claims.update(iat=now - 7200, nbf=now - 7200, exp=now - 3600)
    return kontrol.keypairs.sign(claims, kontrol.keypairs.current())


def test_tunnelled_calls_are_authenticated_like_direct_ones(kontrol, tunnelled):
    """Go serves a tunnel as a dialed connection and skips authentication; ours does not."""
    proxy, backend, caller, found = tunnelled
    credentials = {
        "none": None,
        "bogus": Auth("token", "not.a.token"),
        "forged": Auth("token", pyjwt.encode(pyjwt.decode(found.auth.key, options={"verify_signature": False}),
                                             TunnelTokens().private_pem, algorithm="RS256")),
        "expired": Auth("token", expired_like(kontrol, found.auth.key)),
    }
    for name, auth in credentials.items():
        c = caller.new_client(found.url)
        c.auth = auth
        c.dial_timeout(5)
        with c:
            with pytest.raises(AuthenticationError):
                c.tell_with_timeout("square", 5, 2)
            assert c.tell_with_timeout("kite.ping", 5) == "pong", name  # the one method without auth
    with dial_through(caller, found, "websocket") as c:
        assert c.tell_with_timeout("square", 5, 4) == 16


def test_kite_tunnel_is_refused_from_anyone_but_its_tunnel_proxy(kites):
    """Else any caller could make the kite dial an address of their choosing."""
    backend = kites()  # listens
    caller = kites(serve=False)
    with caller.new_client(backend.url) as c:
        c.auth = Auth("kiteKey", caller.kite_key())
        with pytest.raises(AuthenticationError, match="tunnel proxy"):
            c.tell_with_timeout("kite.tunnel", 5, {"url": "ws://127.0.0.1:1/tunnel/0/t1/websocket"})


def test_the_tunnel_call_is_go_shaped(tunnelled):
    """What the kite receives: ``kite.tunnel`` ``[{"url": "ws://<public host>/tunnel/…/websocket?token=<jwt>"}]``
    with a token ``{sub, seq, iat, nbf, exp}`` (Go kites dial that URL as it is)."""
    proxy, backend, caller, found = tunnelled
    seen: list = []
    backend.pre_handle_func(lambda r: seen.append(r.args.raw) if r.method == "kite.tunnel" else None)
    with dial_through(caller, found, "websocket") as c:
        assert c.tell_with_timeout("square", 5, 3) == 9
    [[options]] = seen
    assert list(options) == ["url"]
    url, _, token = options["url"].partition("?token=")
    assert re.fullmatch(rf"ws://127\.0\.0\.1:{proxy.port}/tunnel/[^/.]+/[^/.]+/websocket", url), url
    claims = pyjwt.decode(token, proxy.tokens.public_pem, algorithms=["RS256"])
    assert set(claims) == {"sub", "seq", "iat", "nbf", "exp"} and claims["sub"] == backend.id


def _recording(sign, sent: list[dict]):
    def record(kite_id: str, seq: int) -> str:
        token = sign(kite_id, seq)
        sent.append({"kite_id": kite_id, "seq": seq, "token": token})
        return token

    return record


# -- the /tunnel side takes only its own tokens, once -------------------------------------------


def assert_refused(url: str, reason: str) -> None:
    session = dial_sockjs_websocket(url, timeout=5)
    with gevent.Timeout(5):
        assert session.recv() is None
    assert (session.close_code, session.close_reason) == (3000, reason)


def test_the_tunnel_side_refuses_bad_unknown_and_replayed_tokens(tunnelled, monkeypatch):
    proxy, backend, caller, found = tunnelled
    base = f"ws://127.0.0.1:{proxy.port}/tunnel/0/t1/websocket"
    assert_refused(base, "Invalid tunnel token")
    assert_refused(base + "?token=abc.def.ghi", "Invalid tunnel token")
    assert_refused(base + "?token=" + TunnelTokens().sign(backend.id, 1), "Invalid tunnel token")  # another key
    expired = TunnelTokens(proxy.tokens.private_pem, proxy.tokens.public_pem, ttl=-600)
    assert_refused(base + "?token=" + expired.sign(backend.id, 1), "Invalid tunnel token")
    assert_refused(base + "?token=" + proxy.tokens.sign(backend.id, 10**6), "No such tunnel")
    sent: list[dict] = []
    monkeypatch.setattr(proxy.tokens, "sign", _recording(proxy.tokens.sign, sent))
    with dial_through(caller, found, "websocket") as c:
        assert c.tell_with_timeout("square", 5, 5) == 25
        assert_refused(base + "?token=" + sent[0]["token"], "No such tunnel")  # used: no second attach
        assert c.tell_with_timeout("square", 5, 6) == 36


# -- routing -------------------------------------------------------------------------------------


def test_go_xhr_path_after_the_query_string_is_routed(tunnelled):
    """Go's XHR client appends the session path to the URL as it is: ``/proxy?kiteID=<id>/<server>/<session>/xhr``.
    Go's own tunnel proxy cannot serve that; ours routes it like ``/proxy/<server>/<session>/xhr?kiteID=<id>``."""
    proxy, backend, caller, found = tunnelled
    session = f"{found.url}/417/goxhrsession0000"
    http = requests.Session()
    try:
        assert http.post(f"{session}/xhr", timeout=5).text == "o\n"
        options = {"kite": caller.identity_wire(), "authentication": found.auth.to_wire(), "withArgs": [8],
                   "responseCallback": "[Function]"}
        call = json.dumps({"method": "square", "arguments": [options], "callbacks": {"0": [0, "responseCallback"]}})
        assert http.post(f"{session}/xhr_send", data=json.dumps([call]), timeout=5).status_code == 204
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            frame = http.post(f"{session}/xhr", timeout=15).text
            if frame.startswith("a"):
                [reply] = json.loads(frame[1:])
                assert json.loads(reply)["arguments"][0] == {"error": None, "result": 64}
                break
        else:
            pytest.fail("no answer through Go's XHR form")
    finally:
        http.close()


def test_route_go_xhr_and_kite_id_of():
    environ = {"PATH_INFO": "/proxy", "QUERY_STRING": "kiteID=abc-1/417/sess/xhr_send"}
    route_go_xhr(environ)
    assert environ == {"PATH_INFO": "/proxy/417/sess/xhr_send", "QUERY_STRING": "kiteID=abc-1"}
    kept = {"PATH_INFO": "/proxy/417/sess/xhr", "QUERY_STRING": "kiteID=abc-1"}
    route_go_xhr(kept)
    assert kept == {"PATH_INFO": "/proxy/417/sess/xhr", "QUERY_STRING": "kiteID=abc-1"}
    assert kite_id_of("kiteID=abc-1&x=2") == "abc-1" and kite_id_of("") == ""


def test_an_unknown_kite_is_a_404_before_any_session_opens(tunnel_proxy, kites):
    caller = kites("bob", "caller", serve=False)
    base = f"http://127.0.0.1:{tunnel_proxy.port}/proxy"
    for transport in ("websocket", "xhr_polling"):
        c = caller.new_client(f"{base}?kiteID=nosuchkite", transport=transport)
        with pytest.raises(DialError) as err:
            c.dial_timeout(5)
        assert err.value.status_code == 404
    response = requests.post(f"{base}/417/abc/xhr", timeout=5)  # no kiteID at all
    assert response.status_code == 404 and "No kite" in response.text


def test_go_style_ws_proxy_urls_are_dialed_as_sockjs():
    """Go's tunnel proxy registers ``ws://host/kite``: a SockJS base to Go's 2018 client."""
    assert sockjs_base_url("ws://10.0.0.1:3999/kite") == "http://10.0.0.1:3999/kite"
    assert sockjs_base_url("wss://p.example.com/kite/") == "https://p.example.com/kite/"
    assert sockjs_base_url("ws://10.0.0.1:3999/kite/websocket") == "ws://10.0.0.1:3999/kite/websocket"
    assert sockjs_base_url("http://10.0.0.1:3999/kite") == "http://10.0.0.1:3999/kite"


def test_kite_proxy_url_names_the_tunnel_proxy(tunnel_proxies, kites):
    """``KITE_PROXY_URL`` (config.proxy_url) is used, with the kite key, as for the reverse proxy."""
    wanted, _other = tunnel_proxies(), tunnel_proxies()
    backend = add_methods(kites(serve=False))
    backend.config.proxy_url = wanted.url
    registrar = gevent.spawn(backend.register_to_tunnel)
    try:
        caller = kites("bob", "caller", serve=False)
        found = find_through(caller, f"http://127.0.0.1:{wanted.port}/proxy?kiteID=")
        with dial_through(caller, found, "xhr_polling") as c:
            assert c.tell_with_timeout("square", 5, 11) == 121
    finally:
        registrar.kill()


# -- limits ----------------------------------------------------------------------------------------


def test_the_tunnels_per_kite_are_limited(tunnelled):
    proxy, backend, caller, found = tunnelled
    proxy.max_tunnels = 2
    first, second = dial_through(caller, found, "websocket"), dial_through(caller, found, "xhr_polling")
    try:
        assert first.tell_with_timeout("square", 5, 2) == 4 and second.tell_with_timeout("square", 5, 3) == 9
        third = dial_through(caller, found, "websocket")
        with pytest.raises(KiteError) as err:  # closed at once with c[3000,"Too many tunnels to this kite"]
            third.tell_with_timeout("square", 5, 4)
        assert isinstance(err.value, DisconnectError)
        third.close()
        first.close()
        wait_until(lambda: len(proxy.relays) == 1, 5, lambda: "the first tunnel did not end")
        with dial_through(caller, found, "websocket") as fourth:
            assert fourth.tell_with_timeout("square", 5, 5) == 25
    finally:
        first.close()
        second.close()


def test_idle_tunnels_are_closed(tunnelled):
    proxy, backend, caller, found = tunnelled
    proxy.relays.idle_timeout = 0.4
    c = dial_through(caller, found, "raw")  # a raw WebSocket carries no SockJS heartbeat
    try:
        assert c.tell_with_timeout("square", 5, 2) == 4
        lost = AsyncResult()
        c.on_disconnect(lambda _c: lost.set(time.monotonic()))
        quiet = time.monotonic()
        assert lost.get(timeout=5) - quiet < 2.0
        wait_until(lambda: len(proxy.relays) == 0, 5)
    finally:
        c.close()


def test_a_kite_that_never_dials_back_fails_its_caller_promptly(tunnelled, monkeypatch):
    proxy, backend, caller, found = tunnelled
    monkeypatch.setitem(backend._methods, "kite.tunnel", backend._methods["kite.ping"])  # answers, dials nothing
    proxy.start_timeout = 0.5
    c = dial_through(caller, found, "websocket")
    started = time.monotonic()
    with pytest.raises(DisconnectError):
        c.tell_with_timeout("square", 5, 2)
    assert time.monotonic() - started < 3
    assert len(proxy.relays) == 0 and proxy._waiting == {}
    c.close()
