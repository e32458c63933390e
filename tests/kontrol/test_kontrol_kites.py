"""Kites registering to the real Kontrol and finding each other through it, on every backend,
plus kite.js's own Kontrol client against our Kontrol."""

from __future__ import annotations

import json
import subprocess

import gevent
import pytest

from kite import Kite, NoKitesAvailableError
from kontrol import Kontrol
from kontrol.storage import KontrolQuery
from tests.serving import serve_kite

from ..interop.conftest import KITEJS_DIR, node_binary
from .conftest import FAST, make_kite, start_kontrol, wait_until


def kite_for(kontrol: Kontrol, username: str, name: str = "math") -> Kite:
    """:func:`make_kite`, not served yet, with a 5 s timeout."""
    k = make_kite(kontrol, username, name, serve=False)
    k.config.timeout = 5
    return k


def test_register_find_call_and_deregister_on_exit(kontrol):
    math = serve_kite(kite_for(kontrol, "alice"))
    math.register_forever(math.url)
    assert math.kontrol_ready_notify().wait(5)
    bob = kite_for(kontrol, "bob", "cli")
    [client] = bob.get_kites(username="alice", environment="prod", name="math")
    assert client.kite.id == math.id and client.auth.type == "token"
    with client:
        assert client.tell("square", 6) == 36
    with bob.dial_kite(username="alice") as c:
        assert c.tell("square", 3) == 9
    assert bob.get_token(math.kite())
    math.close()
    wait_until(lambda: kontrol.storage.get(KontrolQuery(username="alice")) == [])
    with pytest.raises(NoKitesAvailableError):
        bob.get_kites(username="alice")
    bob.close()


def test_get_kites_tokens_renew_through_kontrol(kontrol):
    """The renewal asks ``getToken`` with the kite's whole identity (every Kontrol answers that; the Go
    Kontrol on etcd cannot answer Go's id-only renewal, koding/kite#224); ours answers the id alone too."""
    math = serve_kite(kite_for(kontrol, "alice"))
    math.register_forever(math.url)
    bob = kite_for(kontrol, "bob", "cli")
    [client] = bob.get_kites(username="alice", environment="prod", name="math")
    asked: list = []
    kontrol.kite.pre_handle_func(lambda r: asked.append(r.args.raw) if r.method == "getToken" else None)
    with client:
        assert client.tell("square", 6) == 36
        fresh = client.token_renewer.renew()
        assert client.auth.key == fresh and client.tell("square", 7) == 49
    assert asked == [[math.kite().to_wire()]]
    assert bob.get_token({"id": math.id})
    math.close()
    bob.close()


def test_http_registered_kite_expires_after_it_stops(kontrol):
    math = serve_kite(kite_for(kontrol, "alice"))
    result = math.register_http(math.url)
    assert result.heartbeat_interval == 1
    bob = kite_for(kontrol, "bob", "cli")
    [client] = bob.get_kites(username="alice")
    with client:
        assert client.tell("square", 2) == 4
    gevent.sleep(2.5)  # heartbeats keep it alive past interval + delay
    assert kontrol.storage.get(KontrolQuery(username="alice"))
    math.close()  # stops heartbeating; no disconnect to see: the TTL removes it
    wait_until(lambda: kontrol.storage.get(KontrolQuery(username="alice")) == [], timeout=15)
    bob.close()


def test_kites_come_back_after_a_kontrol_restart(backend):
    first = start_kontrol(backend.open())
    port = first.kite.port
    math = serve_kite(kite_for(first, "alice"))
    math.kontrol.retry_interval = 0.5
    math.register_forever(math.url)
    assert math.kontrol_ready_notify().wait(5)
    pairs = [(p.id, p.public, p.private) for p in first.storage.list_key_pairs()]
    first.close()
    storage = backend.open()
    second = Kontrol(first.kite.config, storage, **FAST)
    if not backend.shared and backend.kind == "memory":
        for pair in pairs:  # memory storage forgets: give the new Kontrol the same keys
            second.add_key_pair(pair[1], pair[2], pair[0])
    second.kite.config.port = port
    gevent.spawn(second.run)
    try:
        assert second.kite.server_ready_notify().wait(5)
        wait_until(lambda: second.storage.get_by_id(math.id) is not None, timeout=20)
    finally:
        math.close()
        second.close()


def run_kontrol_js(*args: str, timeout: float = 20) -> tuple[int, dict]:
    proc = subprocess.run(
        [node_binary(), "kontrol.js", *args], cwd=KITEJS_DIR, capture_output=True, text=True, timeout=timeout
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_kitejs_kontrol_client_registers_and_queries(backend):
    if backend.kind != "sqlite":
        pytest.skip("one backend is enough for the foreign client")
    kontrol = start_kontrol(backend.open())
    try:
        math = serve_kite(kite_for(kontrol, "alice"))
        math.register_forever(math.url)
        assert math.kontrol_ready_notify().wait(5)
        bob_key = kontrol.register_user("bob")
        kite = json.dumps({"username": "bob", "environment": "prod", "name": "jscli", "version": "1.0.0",
                           "region": "eu", "hostname": "node"})
        rc, out = run_kontrol_js(kontrol.kite.url, "fetch", json.dumps({"username": "alice"}),
                                 "--auth-type", "kiteKey", "--auth-key", bob_key, "--kite", kite,
                                 "--call", "square", "[4]")
        assert rc == 0, out
        assert [k["url"] for k in out["kites"]] == [math.url]  # kite.js regenerates kite ids
        assert out["call"] == {"result": 16}
        # kite.js registers a kite of its own (and answers Kontrol's kite.heartbeat).
        rc, out = run_kontrol_js(kontrol.kite.url, "register", "http://127.0.0.1:9999/kite",
                                 "--auth-type", "kiteKey", "--auth-key", bob_key, "--kite", kite, "--stay", "1500")
        assert rc == 0, out
        math.close()
    finally:
        kontrol.close()
