"""The kite side of Kontrol over real sockets (PROTOCOL.md §7, §8.2; checklist 27-34).

Kontrol is played by tests/kontrol_double.py, a real Python kite on 127.0.0.1.
Every wait is short: heartbeats tick each second, retries in fractions of one.
"""

from __future__ import annotations

import json
import socket
import time

import gevent
import pytest

from kite import (
    Auth,
    Client,
    GenericError,
    KiteError,
    KiteIdentity,
    KontrolQuery,
    NoKitesAvailableError,
    NoKontrolURLError,
    RegisterError,
    RegisterResult,
    RegisterURLError,
    TimeoutError,
    TokenRenewer,
    auth,
    testkeys,
    testutil,
)
from kite.kontrolclient import client as kontrolclient
from kite.kontrolclient import registerurl
from kite.kontrolclient.heartbeat import kontrol_path
from tests.kontrol_double import KontrolDouble
from tests.serving import serve_kite

#: The URL kites register in these tests (nothing needs to listen there).
KITE_URL = "http://127.0.0.1:7777/kite"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout: float = 5.0, step: float = 0.02) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        gevent.sleep(step)
    return predicate()


@pytest.fixture
def kontrol():
    with KontrolDouble() as double:
        yield double


@pytest.fixture
def new_kite():
    """A factory of test kites (user alice, short timeouts), closed after the test."""
    kites = []

    def make(name: str = "app", kontrol_url: str = "", username: str = "alice", **config):
        config.setdefault("timeout", 3.0)
        k = testutil.new_kite(name, username=username, environment="prod", **config)
        k.config.kontrol_url = kontrol_url
        kites.append(k)
        return k

    yield make
    for k in kites:
        k.close()


@pytest.fixture
def math(kontrol, new_kite):
    """alice's math kite, served and registered with the double."""
    k = new_kite("math", kontrol.url)
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("whoami", lambda r: r.username)
    serve_kite(k)
    k.register(k.url)
    return k


# --------------------------------------------------------------------------- queries and types


def test_kontrol_query_shapes():
    identity = KiteIdentity("math", "alice", "id1", "prod", "eu", "1.0.0", "host")
    expected_order = ["username", "environment", "name", "version", "region", "hostname", "id"]
    q = KontrolQuery.from_any(identity)
    assert list(q.to_wire()) == expected_order
    assert q.to_wire() == {"username": "alice", "environment": "prod", "name": "math", "version": "1.0.0",
                           "region": "eu", "hostname": "host", "id": "id1"}
    q = KontrolQuery.from_any({"name": "math", "region": None}, username="alice")
    assert q.to_wire() == {"username": "alice", "environment": "", "name": "math", "version": "", "region": "",
                           "hostname": "", "id": ""}
    assert KontrolQuery.from_any(id="x").to_wire()["id"] == "x"
    with pytest.raises(ValueError, match="unknown query field"):
        KontrolQuery.from_any({"nmae": "math"})
    with pytest.raises(TypeError):
        KontrolQuery.from_any({"name": 3})
    with pytest.raises(TypeError):
        KontrolQuery.from_any(["math"])


def test_register_result_wire():
    r = RegisterResult.from_wire({"url": "u", "heartbeatInterval": 10})
    assert (r.url, r.heartbeat_interval, r.kite_key, r.public_key, r.err) == ("u", 10, "", "", "")
    assert r.to_wire() == {"url": "u", "heartbeatInterval": 10}
    full = RegisterResult.from_wire({"url": "u", "heartbeatInterval": 0, "kiteKey": "k", "publicKey": "p"})
    assert full.to_wire() == {"url": "u", "heartbeatInterval": 0, "publicKey": "p", "kiteKey": "k"}
    assert RegisterResult.from_wire({"err": "nope"}).err == "nope"
    for bad in (None, [], {"url": 3}, {"heartbeatInterval": "10"}, {"heartbeatInterval": True}):
        with pytest.raises(ValueError):
            RegisterResult.from_wire(bad)


def test_kontrol_paths():
    assert kontrol_path("http://k:4000/kite", "register") == "http://k:4000/register"
    assert kontrol_path("http://k:4000", "heartbeat") == "http://k:4000/heartbeat"
    assert kontrol_path("https://k/x/kite", "register") == "https://k/x/register"


def test_error_types_and_texts():
    err = NoKitesAvailableError()
    assert isinstance(err, KiteError) and err.message == "no kites availabile" and str(err) == "no kites availabile"
    assert NoKontrolURLError().message == "no kontrol URL given in config"


# --------------------------------------------------------------------------- register over the websocket


def test_register_wire_shape_and_heartbeat(kontrol, new_kite):
    """Checklist 27 and 28."""
    k = new_kite("app", kontrol.url)
    seen = []
    k.on_register(seen.append)
    assert not k.kontrol_ready_notify().is_set()
    received = []  # the raw options of the calls the kite receives
    handle_call = k._handle_call
    k._handle_call = lambda client, name, args: (received.append((name, args[0])), handle_call(client, name, args))

    result = k.register(KITE_URL)

    assert result == RegisterResult(url=KITE_URL, heartbeat_interval=0)
    assert seen == [result] and k.kontrol_ready_notify().is_set()
    [options] = kontrol.calls_of("register")
    assert set(options) == {"kite", "authentication", "responseCallback", "withArgs"}
    assert options["kite"] == k.identity_wire()
    assert all(value and "/" not in value for value in options["kite"].values())
    assert options["authentication"] == {"type": "kiteKey", "key": k.kite_key()}
    assert options["withArgs"] == [{"url": KITE_URL}]
    assert kontrol.registrations[k.id] == {"kite": k.kite().to_wire(), "url": KITE_URL, "via": "websocket"}

    # Kontrol's kite.heartbeat comes back on the kite's own connection, without
    # credentials, and is served: an immediate ping, then one per second.
    assert wait_for(lambda: kontrol.pings[k.id] >= 2, timeout=3)
    assert kontrol.heartbeat_replies == [("ok", None)]
    [(name, heartbeat)] = received
    assert name == "kite.heartbeat" and heartbeat["authentication"] is None
    assert heartbeat["kite"]["name"] == "kontrol" and heartbeat["withArgs"][0] == 1


def test_register_result_rotates_keys(kontrol, new_kite):
    """Checklist 34: kiteKey/publicKey in the register result replace the kite's keys in memory."""
    k = new_kite("app", kontrol.url)
    other = testkeys.other_key_pair()
    rotated = testutil.new_kite_key("alice", key_pair=other)
    kontrol.rotate = (rotated, other.public_pem)
    seen = []
    k.on_register(lambda r: seen.append((r.kite_key, k.config.kite_key)))

    k.register(KITE_URL)

    assert k.config.kite_key == rotated and k.kite_key() == rotated
    assert k.config.kontrol_key == other.public_pem
    assert seen == [(rotated, rotated)]  # applied before the handlers ran
    assert k.kontrol.client.auth == Auth("kiteKey", rotated)
    k.tell_kontrol_with_timeout("getKey", 3)
    assert kontrol.calls_of("getKey")[-1]["authentication"] == {"type": "kiteKey", "key": rotated}
    # Tokens are now checked with the new Kontrol key.
    assert k.verifier.verify_token(testutil.new_token("bob", "/alice/prod/app", key_pair=other)) == "bob"
    with pytest.raises(KiteError, match="token is expired"):  # signed by the old pair
        k.verifier.verify_token(testutil.new_token("bob", "/alice/prod/app"))


def test_register_forever_retries_and_reregisters(new_kite):
    port = free_port()
    k = new_kite("app", f"http://127.0.0.1:{port}/kite", timeout=0.5)
    k.kontrol.retry_interval = 0.2

    with pytest.raises(TimeoutError, match="Timed out registering to kontrol for register method"):
        k.register_forever(KITE_URL)  # nothing listens yet: the first attempt's error

    events = []
    with KontrolDouble(port=port) as first:
        assert k.kontrol_ready_notify().wait(5)
        assert first.registrations[k.id]["url"] == KITE_URL
        k.watch_kites({"name": "app"}, events.append)
        assert [e["action"] for e in events] == ["REGISTER"]
    assert wait_for(lambda: not k.kontrol.connected, timeout=3)

    with KontrolDouble(port=port) as second:  # Kontrol restarted: it knows nothing
        assert wait_for(lambda: k.id in second.registrations, timeout=5)
        assert second.registrations[k.id]["url"] == KITE_URL
        assert wait_for(lambda: second.pings[k.id] >= 1, timeout=3)
        # The watch is renewed on the new connection too.
        assert wait_for(lambda: len(second.watch_callbacks) == 1, timeout=3)
        second.push({"action": "DEREGISTER", "kite": k.kite().to_wire()})
        assert wait_for(lambda: events[-1]["action"] == "DEREGISTER")


def test_register_forever_returns_after_success(kontrol, new_kite):
    k = new_kite("app", kontrol.url)
    k.register_forever(KITE_URL)
    assert k.kontrol_ready_notify().is_set()
    assert k.kontrol.last_registered_url == KITE_URL
    assert len(kontrol.calls_of("register")) == 1


def test_register_error_is_raised(kontrol, new_kite):
    k = new_kite("app", kontrol.url)
    with pytest.raises(GenericError, match="empty url"):
        k.register("")
    assert not k.kontrol_ready_notify().is_set()


# --------------------------------------------------------------------------- register over HTTP


def test_register_http_heartbeats_and_registers_again(kontrol, new_kite):
    """Checklist 29 and 30."""
    k = new_kite("app", kontrol.url)
    k.kontrol.http_register_initial = 0.05

    result = k.register_http(KITE_URL)

    assert result == RegisterResult(url=KITE_URL, heartbeat_interval=1)
    assert k.kontrol_ready_notify().is_set()
    [sent] = kontrol.http_registers
    assert sent["method"] == "POST" and sent["content_type"] == "application/json"
    body = json.loads(sent["body"])
    assert list(body) == ["url", "kite", "auth"]
    assert body == {"url": KITE_URL, "kite": k.identity_wire(), "auth": {"type": "kiteKey", "key": k.kite_key()}}

    heartbeat = k.kontrol.http_heartbeat
    assert wait_for(lambda: heartbeat.pongs >= 1, timeout=3)
    assert kontrol.http_heartbeats[k.id] >= 1

    kontrol.forget(k.id)  # the next heartbeat is answered "registeragain"
    assert wait_for(lambda: len(kontrol.http_registers) == 2, timeout=3)
    assert not heartbeat.running
    assert wait_for(lambda: k.kontrol.http_heartbeat is not heartbeat and k.kontrol.http_heartbeat.running)
    assert kontrol.registrations[k.id]["via"] == "http"


def test_register_http_forever_backs_off(kontrol, new_kite):
    k = new_kite("app", kontrol.url)
    kontrol.http_failures = 2
    started = time.monotonic()
    result = k.register_http_forever(KITE_URL, initial=0.05, multiplier=1.7, max_interval=0.1)
    assert result.heartbeat_interval == 1
    assert len(kontrol.http_registers) == 3
    assert time.monotonic() - started < 2


def test_register_http_errors(kontrol, new_kite):
    foreign = testutil.new_kite_key("alice", key_pair=testkeys.generate_key_pair())
    k = new_kite("app", kontrol.url)
    k.config.kite_key = foreign
    with pytest.raises(RegisterError, match="kontrol key is not trusted"):
        k.register_http(KITE_URL)  # 401 with {"err": ...}
    with pytest.raises(RegisterError, match="empty URL"):
        new_kite("app2", kontrol.url).register_http("")
    with pytest.raises(NoKontrolURLError):
        new_kite("app3", "").register_http(KITE_URL)
    with pytest.raises(RegisterError, match="invalid register response"):
        new_kite("app4", kontrol.url.replace("/kite", "/nothing/kite")).register_http(KITE_URL)  # 404 page


def test_websocket_heartbeat_replaces_http_heartbeat(kontrol, new_kite):
    """One heartbeat ticker per kite (§6.4): Kontrol's kite.heartbeat stops the HTTP one."""
    k = new_kite("app", kontrol.url)
    k.register_http(KITE_URL)
    heartbeat = k.kontrol.http_heartbeat
    assert heartbeat.running
    k.register(KITE_URL)
    assert wait_for(lambda: kontrol.pings[k.id] >= 1, timeout=3)
    assert wait_for(lambda: not heartbeat.running, timeout=1)


# --------------------------------------------------------------------------- lookups


def test_get_kites_returns_undialed_token_clients(kontrol, new_kite, math):
    """Checklist 31: undialed clients that call the target with Kontrol tokens, renewed with the target's
    whole identity (Go renews by id alone, which the Go Kontrol on etcd cannot answer: koding/kite#224)."""
    caller = new_kite("caller", kontrol.url, username="bob")
    [c] = caller.get_kites(username="alice", environment="prod", name="math")

    assert isinstance(c, Client) and not c.connected
    assert c.kite == math.kite() and c.url == math.url
    assert c.auth.type == "token" and isinstance(c.token_renewer, TokenRenewer)
    [options] = kontrol.calls_of("getKites")
    assert options["withArgs"] == [{
        "query": {"username": "alice", "environment": "prod", "name": "math", "version": "", "region": "",
                  "hostname": "", "id": ""},
        "watchCallback": None,
        "who": None,
    }]

    c.dial_timeout(5)
    try:
        assert c.tell("square", 3) == 9
        assert c.tell("whoami") == "bob"  # authenticated by the token's sub

        stale = c.auth.key
        fresh = c.token_renewer.renew()
        assert fresh != stale and c.auth == Auth("token", fresh)
        query, force = kontrol.token_queries[-1]
        assert query == math.kite().to_wire() and all(query.values())
        assert force is None
        assert auth.decode_jwt(fresh).claims["aud"] == "/alice/prod/math"
        assert c.tell("square", 4) == 16
    finally:
        c.close()


def test_no_kites_available(kontrol, new_kite):
    caller = new_kite("caller", kontrol.url)
    with pytest.raises(NoKitesAvailableError, match="^no kites availabile$"):
        caller.get_kites(KontrolQuery(username="alice", name="nosuch"))


def test_get_token(kontrol, new_kite, math):
    """Checklist 32."""
    caller = new_kite("caller", kontrol.url, username="bob")
    token = caller.get_token(math.kite())
    claims = auth.decode_jwt(token).claims
    assert claims["sub"] == "bob" and claims["aud"] == "/alice/prod/math"
    assert kontrol.token_queries[-1] == (KontrolQuery.from_any(math.kite()).to_wire(), None)

    caller.get_token({"id": math.id}, force=True)
    assert kontrol.token_queries[-1][1] is True
    with pytest.raises(GenericError, match="no kites found"):
        caller.get_token(KontrolQuery(id="nosuch"))


def test_get_key_and_key_renewer(kontrol, new_kite):
    """Checklist 33: getKey replaces the trusted Kontrol key."""
    k = new_kite("app", kontrol.url)
    other = testkeys.other_key_pair().public_pem
    kontrol.key_pem = other
    assert k.get_key() == other
    assert k.config.kontrol_key == other
    assert k.kontrol_key().public_numbers() == testkeys.other_key_pair().private_key.public_key().public_numbers()

    kontrol.key_pem = "not a key"
    with pytest.raises(KiteError, match="getKey"):
        k.get_key()
    assert k.config.kontrol_key == other

    kontrol.key_pem = testkeys.public_pem()
    before = len(kontrol.calls_of("getKey"))
    renewer = k.new_key_renewer(0.1)
    assert wait_for(lambda: len(kontrol.calls_of("getKey")) >= before + 2, timeout=2)
    assert k.config.kontrol_key == testkeys.public_pem()
    renewer.stop()
    gevent.sleep(0.05)
    count = len(kontrol.calls_of("getKey"))
    gevent.sleep(0.25)
    assert len(kontrol.calls_of("getKey")) == count and not renewer.running


def test_dial_kite_fails_over(kontrol, new_kite, math, monkeypatch, dead_port):
    dead = KiteIdentity("math", "alice", "dead-id", "prod", "unknown", "1.0.0", "gone")
    kontrol.registrations = {}
    kontrol.add_kite(dead.to_wire(), f"http://127.0.0.1:{dead_port}/kite")
    kontrol.add_kite(math.kite().to_wire(), math.url)
    monkeypatch.setattr(kontrolclient.random, "shuffle", lambda items: None)  # the dead one first

    caller = new_kite("caller", kontrol.url, username="bob")
    c = caller.dial_kite(username="alice", name="math", timeout=2)
    try:
        assert c.connected and c.url == math.url and c.kite == math.kite()
        assert c.tell("square", 5) == 25
    finally:
        c.close()

    kontrol.forget(math.id)
    with pytest.raises(ConnectionError, match="dialing http://127.0.0.1"):  # the last dial error
        caller.dial_kite(username="alice", name="math", timeout=2)


def test_watch_kites(kontrol, new_kite, math):
    kontrol.watcher_id = "w1"
    caller = new_kite("caller", kontrol.url, username="bob")
    events = []
    watcher = caller.watch_kites({"username": "alice", "name": "math"}, events.append)

    assert watcher.id == "w1"
    assert len(events) == 1 and events[0]["action"] == "REGISTER"
    assert events[0]["kite"] == math.kite().to_wire() and events[0]["url"] == math.url and events[0]["token"]

    kontrol.push({"action": "DEREGISTER", "kite": math.kite().to_wire()})
    assert wait_for(lambda: len(events) == 2)
    assert events[1] == {"action": "DEREGISTER", "kite": math.kite().to_wire()}

    watcher.cancel()
    assert kontrol.cancelled_watchers == ["w1"]
    kontrol.push({"action": "REGISTER", "kite": math.kite().to_wire(), "url": math.url})
    gevent.sleep(0.1)
    assert len(events) == 2


def test_unreachable_or_unconfigured_kontrol(new_kite, dead_port):
    k = new_kite("app", f"http://127.0.0.1:{dead_port}/kite", timeout=0.3)
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="Timed out registering to kontrol for getKey method after 0.3s"):
        k.tell_kontrol_with_timeout("getKey", 1)
    assert time.monotonic() - started < 2
    with pytest.raises(TimeoutError):
        k.get_kites(name="math")

    with pytest.raises(NoKontrolURLError, match="no kontrol URL given in config"):
        new_kite("other", "").setup_kontrol_client()


# --------------------------------------------------------------------------- register URL and lifetime


def test_register_url(new_kite):
    k = new_kite("app", "", port=4567)
    try:
        local = registerurl.local_ipv4()
    except RegisterURLError:
        pytest.skip("this host has no non-loopback IPv4 address")
    assert not local.startswith("127.")
    assert k.register_url(local=True) == f"http://{local}:4567/kite"

    with pytest.raises(RegisterURLError, match="public"):
        k.register_url(local=False)  # config.ip is 127.0.0.1
    k.config.ip = "8.8.8.8"
    assert k.register_url(local=False) == "http://8.8.8.8:4567/kite"
    k.config.port = 0
    with pytest.raises(RegisterURLError, match="no port"):
        k.register_url()


def test_close_stops_kontrol_activity(kontrol, new_kite):
    k = new_kite("app", kontrol.url)
    k.register_forever(KITE_URL)
    k.register_http(KITE_URL)
    renewer = k.new_key_renewer(10)
    heartbeat = k.kontrol.http_heartbeat
    client = k.kontrol.client

    k.close()

    gevent.sleep(0.05)
    assert not heartbeat.running and not renewer.running
    assert not client.connected and not client.reconnect
    assert k.kontrol._registrar.dead
    with pytest.raises(KiteError, match="closed"):
        k.register_forever(KITE_URL)
