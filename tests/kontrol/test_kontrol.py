"""The Kontrol kite on every storage backend: register, find, tokens, keys, liveness, watch, bad input."""

from __future__ import annotations

import json

import pytest
import requests
from gevent.event import Event

from kite import Auth, AuthenticationError, GenericError, Kite
from kontrol import Kontrol
from kontrol.storage import KontrolQuery

from .conftest import make_kite, start_kontrol, wait_until


def kontrol_client(kontrol: Kontrol, kite: Kite):
    c = kite.new_client(kontrol.kite.url)
    c.auth = Auth("kiteKey", kite.config.kite_key)
    c.dial()
    return c


def register(kontrol: Kontrol, kite: Kite):
    """Register ``kite`` over its own websocket to Kontrol; returns (client, result)."""
    c = kontrol_client(kontrol, kite)
    return c, c.tell("register", {"url": kite.url})


def test_register_find_call_with_token_and_deregister_on_disconnect(kontrol):
    math = make_kite(kontrol, "alice")
    conn, result = register(kontrol, math)
    assert result == {"url": math.url, "heartbeatInterval": 0}
    bob = make_kite(kontrol, "bob", "cli", serve=False)
    bc = kontrol_client(kontrol, bob)
    found = bc.tell("getKites", {"query": {"username": "alice", "environment": "prod", "name": "math"}})
    [entry] = found["kites"]
    assert entry["kite"] == math.kite().to_wire() and entry["url"] == math.url and entry["keyId"]
    caller = bob.new_client(entry["url"])
    caller.auth = Auth("token", entry["token"])
    with caller:
        assert caller.tell("square", 5) == 25
    # Tokens are for the caller, about the query's audience.
    assert bc.tell("getToken", math.kite().to_wire())
    assert bc.tell("getToken", {"id": math.id})
    conn.close()
    wait_until(lambda: bc.tell("getKites", {"query": {"username": "alice"}})["kites"] == [])
    math.close()


def test_kontrol_drives_kite_heartbeat_on_the_kites_connection(kontrol):
    math = make_kite(kontrol, "alice")
    beats = []
    math.handle_func("kite.heartbeat", lambda r: beats.append(r.args[0]) or r.args[1]())
    conn, _ = register(kontrol, math)
    wait_until(lambda: beats == [1])  # [interval, fn] with the configured interval, no auth needed
    conn.close()
    math.close()


def test_query_rules_and_token_errors(kontrol):
    a1 = make_kite(kontrol, "alice")
    a2 = make_kite(kontrol, "alice")
    c1, _ = register(kontrol, a1)
    c2, _ = register(kontrol, a2)
    bob = make_kite(kontrol, "bob", "cli", serve=False)
    bc = kontrol_client(kontrol, bob)
    assert len(bc.tell("getKites", {"query": {"username": "alice", "environment": "prod"}})["kites"]) == 2
    assert bc.tell("getKites", {"query": {"id": a2.id}})["kites"][0]["kite"]["id"] == a2.id
    assert bc.tell("getKites", {"query": {"username": "alice", "version": ">= 1.0.0, < 2.0.0",
                                          "environment": "prod", "name": "math"}})["kites"]
    with pytest.raises(GenericError, match="Empty username field"):
        bc.tell("getKites", {"query": {"name": "math"}})
    with pytest.raises(GenericError, match="Query option is not set: environment"):
        bc.tell("getKites", {"query": {"username": "alice", "name": "math"}})
    with pytest.raises(GenericError, match="query matches more than one kite"):
        bc.tell("getToken", {"username": "alice", "environment": "prod", "name": "math"})
    with pytest.raises(GenericError, match="no kites found"):
        bc.tell("getToken", {"username": "nobody"})
    for c in (c1, c2):
        c.close()
    a1.close()
    a2.close()


def test_get_key_and_rotation_resigns_kite_keys(kontrol):
    math = make_kite(kontrol, "alice")
    old = kontrol.keypairs.current()
    c = kontrol_client(kontrol, math)
    assert c.tell("getKey") == old.public
    new = kontrol.keypairs.rotate()
    kontrol.keypairs.retire(old.id)
    assert c.tell("getKey") == new.public
    result = c.tell("register", {"url": math.url})
    assert result["publicKey"] == new.public and result["kiteKey"]
    # The re-signed key carries the new kontrolKey and is accepted by Kontrol.
    c2 = math.new_client(kontrol.kite.url)
    c2.auth = Auth("kiteKey", result["kiteKey"])
    with c2:
        assert c2.tell("getKey") == new.public
    c.close()
    math.close()


def test_register_machine_is_refused_by_default_and_can_be_opened(backend):
    kontrol = start_kontrol(backend.open())
    try:
        anon = Kite("laptop", "1.0.0")
        anon.config.username = "carol"
        c = anon.new_client(kontrol.kite.url)
        with c:
            with pytest.raises(GenericError, match="cannot authenticate user"):
                c.tell("registerMachine", {"authType": "secret"})
            kontrol.machine_authenticator = lambda auth_type, r: None if auth_type == "s3cret" else 1 / 0
            key = c.tell("registerMachine", {"AuthType": "s3cret"})
        from kite.auth import kite_key_claims

        claims = kite_key_claims(key)
        assert claims["sub"] == "carol" and claims["iss"] == "koding"
        assert claims["kontrolKey"] == kontrol.keypairs.current().public
    finally:
        kontrol.close()


def test_watch_streams_register_and_deregister(kontrol):
    bob = make_kite(kontrol, "bob", "cli", serve=False)
    bc = kontrol_client(kontrol, bob)
    events = []
    got = Event()

    def on_event(response):
        events.append(response["result"])
        got.set()

    result = bc.tell("getKites", {"query": {"username": "alice"}, "watchCallback": on_event})
    assert result["kites"] == [] and result["watcherID"]
    math = make_kite(kontrol, "alice")
    conn, _ = register(kontrol, math)
    wait_until(lambda: [e["action"] for e in events][:1] == ["REGISTER"])
    assert events[0]["kite"]["id"] == math.id and events[0]["url"] == math.url and events[0]["token"]
    conn.close()
    wait_until(lambda: "DEREGISTER" in [e["action"] for e in events])
    bc.tell("cancelWatcher", result["watcherID"])
    math.close()


def http_base(kontrol: Kontrol) -> str:
    return f"http://127.0.0.1:{kontrol.kite.port}"


def test_http_register_heartbeat_and_ttl_expiry(kontrol):
    math = make_kite(kontrol, "alice", serve=False)
    body = {"url": "http://127.0.0.1:9/kite", "kite": math.kite().to_wire(),
            "auth": {"type": "kiteKey", "key": math.config.kite_key}}
    r = requests.post(http_base(kontrol) + "/register", json=body, timeout=5)
    assert r.status_code == 200 and r.json() == {"url": body["url"], "heartbeatInterval": 1}
    assert r.text.endswith("\n")
    beat = requests.get(http_base(kontrol) + "/heartbeat", params={"id": math.id}, timeout=5)
    assert beat.text == "pong"
    assert requests.get(http_base(kontrol) + "/heartbeat", params={"id": "nope"}, timeout=5).text == "registeragain"
    r = requests.get(http_base(kontrol) + "/heartbeat", timeout=5)
    assert r.status_code == 400 and json.loads(r.text) == {"err": "query id is empty"}
    query = KontrolQuery(username="alice")
    assert len(kontrol.storage.get(query)) == 1
    # No more heartbeats: gone after interval + delay, then the storage TTL.
    wait_until(lambda: kontrol.storage.get(query) == [], timeout=15)
    beat = requests.get(http_base(kontrol) + "/heartbeat", params={"id": math.id}, timeout=5)
    assert beat.text == "registeragain"


def test_bad_input_gets_clear_errors_and_loses_nothing(kontrol):
    math = make_kite(kontrol, "alice")
    conn, _ = register(kontrol, math)
    base = http_base(kontrol)
    key = math.config.kite_key
    bad_key = {"type": "kiteKey", "key": "x.y.z"}
    cases = [
        (b"not json", 400, "wrong register input"),
        (json.dumps({"url": "http://x/kite", "kite": math.kite().to_wire(), "auth": {"type": "token", "key": key}}),
         400, "Unexpected authentication type: token"),
        (json.dumps({"url": "", "kite": math.kite().to_wire(), "auth": {"type": "kiteKey", "key": key}}),
         400, "empty URL"),
        (json.dumps({"url": "http://x/kite", "kite": math.kite().to_wire(), "auth": bad_key}), 401, ""),
        (json.dumps({"url": "http://x/kite", "kite": {**math.kite().to_wire(), "name": "a/b"},
                     "auth": {"type": "kiteKey", "key": key}}), 400, "must not contain '/'"),
        (json.dumps({"url": "http://x/kite", "kite": {**math.kite().to_wire(), "region": ""},
                     "auth": {"type": "kiteKey", "key": key}}), 400, "Empty Kite field: region"),
    ]
    for data, status, text in cases:
        r = requests.post(base + "/register", data=data, timeout=5)
        assert r.status_code == status, (data, r.text)
        assert text in json.loads(r.text)["err"]
    c = kontrol_client(kontrol, make_kite(kontrol, "bob", serve=False))
    for args, message in [
        ({}, "empty url"),
        ({"url": "not a url"}, "invalid url"),
        ("just a string", "empty url"),
    ]:
        with pytest.raises(GenericError, match=message):
            c.tell("register", args)
    with pytest.raises(AuthenticationError):
        anon = Kite("anon", "1.0.0").new_client(kontrol.kite.url)
        anon.dial()
        anon.tell("getKites", {"query": {"username": "alice"}})
    # The registration made before all that is still there.
    assert [r.kite.id for r in kontrol.storage.get(KontrolQuery(username="alice"))] == [math.id]
    conn.close()
    math.close()


def test_two_kontrols_share_one_etcd(backend):
    if not backend.shared:
        pytest.skip("separate instances of this backend do not share data (only etcd and postgres do)")
    a = start_kontrol(backend.open())
    b = start_kontrol(backend.open())
    try:
        # Both sign with the key pairs of the shared storage.
        assert a.keypairs.current().id == b.keypairs.current().id
        bob = make_kite(b, "bob", "cli", serve=False)
        bc = kontrol_client(b, bob)
        events = []
        bc.tell("getKites", {"query": {"username": "alice"}, "watchCallback": lambda e: events.append(e)})
        math = make_kite(a, "alice")
        conn, _ = register(a, math)
        wait_until(lambda: bc.tell("getKites", {"query": {"username": "alice"}})["kites"])
        wait_until(lambda: any(e["result"]["action"] == "REGISTER" for e in events))
        conn.close()
        math.close()
    finally:
        a.close()
        b.close()


def test_rotation_with_a_grace_period_retires_the_old_pair_later(kontrol):
    old = kontrol.keypairs.current()
    new = kontrol.keypairs.rotate(grace=0.5)
    assert kontrol.keypairs.by_public(old.public) == old  # still valid during the grace period
    wait_until(lambda: kontrol.storage.list_key_pairs() == [new])
    assert kontrol.keypairs.by_public(old.public, allow_deleted=True).id == old.id


def test_kontrol_registers_itself_and_leaves_when_it_closes(backend):
    kontrol = start_kontrol(backend.open(), register_url="http://kontrol.example:4000/kite")
    try:
        wait_until(lambda: kontrol.registry.seen(kontrol.kite.id))  # it registers itself once serving
        probe = make_kite(kontrol, "alice", serve=False)
        try:
            # Found like any kite: by Kontrol's own user, and by name.
            env = kontrol.kite.config.environment
            for query in ({"username": "koding"}, {"username": "koding", "environment": env, "name": "kontrol"}):
                (found,) = probe.get_kites(query)
                assert found.url == "http://kontrol.example:4000/kite"
                assert (found.kite.name, found.kite.id) == ("kontrol", kontrol.kite.id)
                assert found.kite.version == kontrol.kite.version
        finally:
            probe.close()
    finally:
        kontrol.close()
    if backend.shared:  # another instance on the same etcd no longer finds the stopped Kontrol
        assert backend.open().get(KontrolQuery(username="koding")) == []


def test_kontrol_registers_its_kontrol_url_by_default(backend):
    kontrol = start_kontrol(backend.open())
    try:
        wait_until(lambda: kontrol.registry.seen(kontrol.kite.id))
        (record,) = kontrol.storage.get(KontrolQuery(username="koding"))
        assert record.kite.name == "kontrol"
        assert record.url == kontrol.kite.url
    finally:
        kontrol.close()


def test_a_kite_registering_while_get_kites_reads_still_reaches_the_watcher(kontrol):
    """getKites with a watchCallback: the watch starts before the read, so a kite registered
    between the two is delivered (before, it was in neither the list nor the events)."""
    bob = make_kite(kontrol, "bob", "cli", serve=False)
    bc = kontrol_client(kontrol, bob)
    late = make_kite(kontrol, "alice", serve=False)
    read = kontrol.storage.get
    key_id = kontrol.keypairs.current().id  # the pair its kite key is signed with, as register records

    def read_then_a_kite_registers(query):
        records = read(query)
        kontrol.storage.upsert(late.kite(), "http://127.0.0.1:1/kite", key_id, 60)  # no refresh will repeat it
        return records

    kontrol.storage.get = read_then_a_kite_registers
    events = []
    result = bc.tell("getKites", {"query": {"username": "alice"}, "watchCallback": lambda r: events.append(r)})
    kontrol.storage.get = read
    assert result["kites"] == []
    wait_until(lambda: [e["result"]["kite"]["id"] for e in events] == [late.id])
    bc.close()


def test_an_oversized_register_body_is_refused_unread_by_the_blueprint_too(kontrol):
    """A Flask app mounting the blueprint (under any WSGI server) reads at most the cap of a
    ``POST /register`` body, as Kontrol's own route does, and answers 400."""
    import io

    from flask import Flask

    from kontrol.http import MAX_REGISTER_BODY, blueprint

    class Counting(io.BytesIO):
        taken = 0

        def read(self, size=-1):
            data = super().read(size)
            Counting.taken += len(data)
            return data

        def readinto(self, buffer):
            count = super().readinto(buffer)
            Counting.taken += count
            return count

    app = Flask("mounted")
    app.register_blueprint(blueprint(kontrol))
    size = 16 * 1024 * 1024
    answer = app.test_client().post("/register", input_stream=Counting(b"[" * size), content_length=size,
                                    content_type="application/json")
    assert answer.status_code == 400 and "wrong register input" in answer.get_data(as_text=True)
    assert Counting.taken <= MAX_REGISTER_BODY + 1
    served = requests.post(http_base(kontrol) + "/register", data=b"[" * size, timeout=10)
    assert (served.status_code, served.text) == (answer.status_code, answer.get_data(as_text=True))


def test_the_fast_http_routes_answer_exactly_as_the_blueprint(kontrol):
    """Kontrol serves /register and /heartbeat without Flask; a Flask app mounting the blueprint gets
    the same status, content type and body for every input."""
    from flask import Flask

    from kontrol.http import blueprint

    app = Flask("mounted")
    app.register_blueprint(blueprint(kontrol))
    mounted = app.test_client()
    math = make_kite(kontrol, "alice", serve=False)
    good = {"url": "http://127.0.0.1:9/kite", "kite": math.kite().to_wire(),
            "auth": {"type": "kiteKey", "key": math.config.kite_key}}
    cases = [
        ("post", "/register", {"data": json.dumps(good)}),
        ("post", "/register", {"data": "{not json"}),
        ("post", "/register", {"data": json.dumps({**good, "auth": {"type": "token"}})}),
        ("post", "/register", {"data": json.dumps({**good, "auth": {"type": "kiteKey", "key": "x.y.z"}})}),
        ("post", "/register", {"data": json.dumps({**good, "url": ""})}),
        ("get", "/heartbeat", {"params": {"id": math.id}}),
        ("get", "/heartbeat", {"params": {"id": "nope"}}),
        ("get", "/heartbeat", {}),
        ("get", "/register", {}),
        ("post", "/heartbeat", {}),
    ]
    for method, path, options in cases:
        served = getattr(requests, method)(http_base(kontrol) + path, timeout=5, **options)
        flask_options = {"query_string": options["params"]} if "params" in options else dict(options)
        expected = getattr(mounted, method)(path, **flask_options)
        assert (served.status_code, served.headers["Content-Type"], served.text) == (
            expected.status_code, expected.headers["Content-Type"], expected.get_data(as_text=True)), (method, path)
