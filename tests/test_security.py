"""Security properties, each stated as an attack that must fail (SECURITY.md).

* impersonation: a name claimed in the call envelope never beats the verified one;
* kite keys of other users, tokens replayed to another kite, forged and oversized credentials;
* Kontrol key rotation: what old kite keys and tokens still do, and when they stop;
* ``throttle`` under a flood from several connections;
* oversized messages: refused, the kite serving everyone else;
* kite.key and Kontrol key files: modes, and a warning for a shared kite.key;
* ``registerMachine`` password guessing: rate limited per address, username and overall.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import time

import gevent
import pytest
import requests

from kite import (
    Auth,
    AuthenticationError,
    Config,
    DisconnectError,
    GenericError,
    Kite,
    RequestLimitError,
    kitekey,
    testkeys,
    testutil,
)
from kite.transport import wsclient
from kite.wire import jws
from kontrol import Kontrol
from kontrol.machines import (
    ADDRESS_BURST,
    ADDRESS_REFILL_SECONDS,
    USERNAME_BURST,
    FailureBuckets,
    MachineRateLimit,
    password_authenticator,
)


def whoami(r):
    return {"username": r.username, "peer": r.client.kite.username, "authenticated": r.auth is not None}


@pytest.fixture(scope="module")
def math():
    """alice's prod/math kite trusting the test Kontrol key: ``whoami`` (auth required) and ``open`` (none)."""
    k = testutil.new_kite("math", username="alice", environment="prod")
    k.handle_func("whoami", whoami)
    k.handle_func("open", whoami).disable_authentication()
    with testutil.serve(k):
        yield k


def identity(username: str) -> dict[str, str]:
    return {"username": username, "environment": "prod", "name": "caller", "version": "1.0.0", "region": "r",
            "hostname": "h", "id": f"id-{username}"}


class RawCaller:
    """Calls written by hand on a raw websocket, so the envelope says whatever the attacker wants."""

    def __init__(self, kite: Kite):
        self.ws = wsclient.connect(f"ws://127.0.0.1:{kite.port}/kite/websocket", timeout=5)
        self.next_id = 0

    def call(self, method: str, claimed: str, auth: dict | None = None) -> dict:
        self.next_id += 1
        options = {"kite": identity(claimed), "authentication": auth, "withArgs": [], "responseCallback": "[Function]"}
        self.ws.send_text(json.dumps({"method": method, "arguments": [options],
                                      "callbacks": {str(self.next_id): [0, "responseCallback"]}}))
        reply = json.loads(self.ws.recv_text())
        assert reply["method"] == self.next_id
        return reply["arguments"][0]

    def close(self) -> None:
        self.ws.close()


# --------------------------------------------------------------------------- impersonation


@pytest.mark.parametrize(("auth_type", "credential", "verified"), [
    ("kiteKey", lambda: testutil.new_kite_key("alice"), "alice"),
    ("token", lambda: testutil.new_token("bob", "/alice/prod/math"), "bob"),
])
def test_a_claimed_username_never_beats_the_verified_one(math, auth_type, credential, verified):
    raw = RawCaller(math)
    try:
        auth = {"type": auth_type, "key": credential()}
        # The first call claims "root": the handler sees the credential's user.
        assert raw.call("whoami", "root", auth)["result"] == {"username": verified, "peer": verified,
                                                               "authenticated": True}
        # Later calls claim someone else: ignored (the identity is the first call's, then the verified one).
        assert raw.call("whoami", "admin", auth)["result"]["username"] == verified
        assert raw.call("open", "admin")["result"] == {"username": verified, "peer": verified, "authenticated": False}
        # A forged credential next to a claim gets nothing.
        forged = {"type": auth_type, "key": testutil.sign({"sub": "root", "iss": "kontrol", "aud": "/",
                                                            "exp": time.time() + 60,
                                                            "kontrolKey": testkeys.public_pem()},
                                                           testkeys.other_key_pair())}
        assert raw.call("whoami", "root", forged)["error"]["type"] == "authenticationError"
    finally:
        raw.close()


def test_without_authentication_the_claim_is_reported_as_such(math):
    # disable_authentication: the handler sees the peer's claim, unverified, and no credentials.
    raw = RawCaller(math)
    try:
        assert raw.call("open", "root")["result"] == {"username": "root", "peer": "root", "authenticated": False}
        # A failed authentication leaves the claim unverified; it does not become the verified name.
        bad = {"type": "kiteKey", "key": testutil.new_kite_key("root", key_pair=testkeys.other_key_pair())}
        assert raw.call("whoami", "root", bad)["error"]["type"] == "authenticationError"
        assert raw.call("open", "root")["result"]["authenticated"] is False
    finally:
        raw.close()


def test_a_kite_key_of_another_user_is_refused_by_default(math):
    raw = RawCaller(math)
    try:
        # bob's genuine kite key, bob claiming to be alice: refused (the strict default).
        reply = raw.call("whoami", "alice", {"type": "kiteKey", "key": testutil.new_kite_key("bob")})
        assert reply["error"]["type"] == "authenticationError"
        assert reply["error"]["message"].startswith('kiteKey: user "bob" may not call "whoami"')
    finally:
        raw.close()


def test_credentials_over_the_size_cap_never_reach_pyjwt(monkeypatch):
    def must_not_parse(*args, **kwargs):
        raise AssertionError("PyJWT parsed an oversized credential")

    k = testutil.new_kite("math", username="alice")
    monkeypatch.setattr(jws._PYJWT, "decode_complete", must_not_parse)
    for verify in (k.verifier.verify_token, k.verifier.verify_kite_key):
        with pytest.raises(AuthenticationError, match="token is too long"):
            verify("e" * (jws.MAX_JWT_LENGTH + 1) + ".e30.")


# --------------------------------------------------------------------------- Kontrol: replay, rotation


@pytest.fixture
def kontrol():
    config = Config()
    config.username, config.ip, config.port = "koding", "127.0.0.1", 0
    k = Kontrol(config, "memory")
    gevent.spawn(k.run)
    assert k.kite.server_ready_notify().wait(5)
    yield k
    k.close()


def kite_of(kontrol: Kontrol, username: str, name: str, serve: bool = True) -> Kite:
    """A kite holding a kite key of ``kontrol`` and trusting its current key, with ``whoami``."""
    k = Kite(name, "1.0.0")
    c = k.config
    c.username, c.environment, c.region, c.ip, c.port = username, "prod", "eu", "127.0.0.1", 0
    c.kite_key = kontrol.register_user(username)
    c.kontrol_key = kontrol.keypairs.current().public
    c.kontrol_user, c.kontrol_url = kontrol.username, kontrol.kite.url
    k.handle_func("whoami", whoami)
    if serve:
        gevent.spawn(k.run)
        assert k.server_ready_notify().wait(5)
    return k


def call_with_token(caller: Kite, target: Kite, token: str) -> dict:
    with caller.new_client(target.url) as c:
        c.auth = Auth("token", token)
        return c.tell("whoami")


def test_a_token_for_one_kite_is_refused_by_another(kontrol):
    a, b = kite_of(kontrol, "alice", "math"), kite_of(kontrol, "alice", "other")
    bob = kite_of(kontrol, "bob", "cli", serve=False)
    try:
        a.register(a.url)
        b.register(b.url)
        token = bob.get_token(a.kite().to_wire())
        assert call_with_token(bob, a, token)["username"] == "bob"
        with pytest.raises(AuthenticationError, match='audience: kite "math" not allowed'):
            call_with_token(bob, b, token)
    finally:
        for k in (a, b, bob):
            k.close()


def test_key_rotation_old_credentials_until_retired_then_resigned_or_refused(kontrol):
    old = kontrol.keypairs.current()
    a = kite_of(kontrol, "alice", "math")
    bob = kite_of(kontrol, "bob", "cli", serve=False)
    try:
        a.register(a.url)
        old_token = bob.get_token(a.kite().to_wire(), force=True)
        old_bob_key = bob.config.kite_key

        new = kontrol.keypairs.rotate()
        assert kontrol.keypairs.current().id == new.id != old.id
        # New kite keys are signed by the new pair only.
        fresh = kitekey.parse(kontrol.register_user("carol"))
        assert fresh.kontrol_key == new.public
        jws.verify_signature(jws.decode_jwt(fresh.raw), jws.load_public_key(new.public))
        with pytest.raises(jws.SignatureInvalidError):
            jws.verify_signature(jws.decode_jwt(fresh.raw), jws.load_public_key(old.public))
        # Before retirement the old pair is untouched: kite keys register as they are, tokens still verify.
        assert a.register(a.url).kite_key == ""
        assert call_with_token(bob, a, old_token)["username"] == "bob"
        assert call_with_token(bob, a, bob.get_token(a.kite().to_wire(), force=True))["username"] == "bob"

        kontrol.keypairs.retire(old.id)
        # Kontrol still trusts the retired pair's kite keys -- to re-sign them with the new one.
        result = a.register(a.url)
        assert result.public_key == new.public and kitekey.parse(result.kite_key).kontrol_key == new.public
        assert a.config.kontrol_key == new.public  # adopted (update_auth)
        # Tokens signed with the retired pair are refused (and reported expired: the caller renews) ...
        with pytest.raises(AuthenticationError, match="token: token is expired$"):
            call_with_token(bob, a, old_token)
        # ... the renewed one is signed with the new pair and accepted.
        assert call_with_token(bob, a, bob.get_token(a.kite().to_wire(), force=True))["username"] == "bob"
        # A kite that moved to the new key refuses kite keys signed with the retired one.
        a.config.kite_key_any_user = True
        with a.new_client(a.url) as c, pytest.raises(AuthenticationError, match="kontrol key is not trusted"):
            c.auth = Auth("kiteKey", old_bob_key)
            c.tell("whoami")
        # A key pair Kontrol never stored is not trusted at all.
        stranger = testutil.new_kite_key("mallory", key_pair=testkeys.other_key_pair())
        with Kite("m", "1.0.0").new_client(kontrol.kite.url) as c, \
                pytest.raises(AuthenticationError, match="kontrol key is not trusted"):
            c.auth = Auth("kiteKey", stranger)
            c.tell("getKey")
    finally:
        a.close()
        bob.close()


# --------------------------------------------------------------------------- registerMachine guessing


def test_register_machine_password_guessing_is_rate_limited(kontrol, caplog):
    kontrol.machine_authenticator = password_authenticator("s3cret")
    clock = [1000.0]
    kontrol.machine_rate_limit = MachineRateLimit(clock=lambda: clock[0])
    laptop = Kite("laptop", "1.0.0")
    laptop.config.username = "carol"
    with laptop.new_client(kontrol.kite.url) as c:
        assert c.tell("registerMachine", {"authType": "password", "password": "s3cret"})  # successes are free
        for _ in range(ADDRESS_BURST):
            with pytest.raises(GenericError, match="wrong machine password"):
                c.tell("registerMachine", {"authType": "password", "password": "guess"})
        with caplog.at_level(logging.WARNING, logger="kontrol.machines"):
            # Refused before the password is looked at: the right one does not get through either.
            with pytest.raises(RequestLimitError, match="The maximum request rate is exceeded.*retry in 6 s"):
                c.tell("registerMachine", {"authType": "password", "password": "s3cret"})
        assert "too many failed attempts (address limit) from 127.0.0.1 for user 'carol'" in caplog.text
        clock[0] += ADDRESS_REFILL_SECONDS  # one more attempt after a refill interval
        key = c.tell("registerMachine", {"authType": "password", "password": "s3cret"})
        assert kitekey.parse(key).username == "carol"
        with pytest.raises(GenericError, match="wrong machine password"):
            c.tell("registerMachine", {"authType": "password", "password": "guess"})
        with pytest.raises(RequestLimitError):
            c.tell("registerMachine", {"authType": "password", "password": "guess"})


def test_rate_limit_buckets_per_address_username_and_overall():
    clock = [0.0]
    limit = MachineRateLimit(clock=lambda: clock[0])
    for i in range(ADDRESS_BURST):
        limit.begin("10.0.0.1", f"user{i}")  # failures: nothing given back
    with pytest.raises(RequestLimitError):
        limit.begin("10.0.0.1", "fresh-user")  # the address is spent
    limit.begin("10.0.0.2", "user0")  # another address, another username: fine
    for i in range(USERNAME_BURST):
        limit.begin(f"10.0.1.{i}", "target")  # one username from many addresses
    with pytest.raises(RequestLimitError):
        limit.begin("10.0.9.9", "target")
    # The whole-Kontrol bucket: many addresses, many names.
    for i in range(int(limit.overall.tokens(""))):
        limit.begin(f"10.1.{i}.1", f"n{i}")
    with pytest.raises(RequestLimitError):
        limit.begin("10.2.0.1", "n-last")
    clock[0] += 3600
    limit.begin("10.0.0.1", "target")  # an hour later every bucket is full again ...
    limit.succeeded("10.0.0.1", "target")
    assert len(limit.by_address) == len(limit.by_username) == len(limit.overall) == 0  # ... and forgotten
    # A table never grows past its bound, however many names a peer claims.
    table = FailureBuckets(2, 60.0, max_keys=100, clock=lambda: clock[0])
    for i in range(1000):
        table.take(f"name{i}")
    assert len(table) == 100


# --------------------------------------------------------------------------- throttle


def test_throttle_holds_under_a_flood_from_several_connections():
    fill_interval, capacity = 0.05, 20
    k = testutil.new_kite("math", username="alice")
    k.handle_func("limited", lambda r: 1).disable_authentication().throttle(fill_interval, capacity)
    accepted, refused, other = [], [], []
    with testutil.serve(k):
        clients = [Kite(f"c{i}", "1.0.0").new_client(k.url) for i in range(4)]
        for c in clients:
            c.dial_timeout(5)
        started = time.monotonic()
        stop_at = started + 1.0

        def flood(c):
            while time.monotonic() < stop_at:
                try:
                    c.tell("limited")
                    accepted.append(1)
                except RequestLimitError as exc:
                    assert exc.message == "The maximum request rate is exceeded."
                    refused.append(1)
                except Exception as exc:  # pragma: no cover - reported below
                    other.append(exc)

        gevent.joinall([gevent.spawn(flood, c) for c in clients for _ in range(4)], timeout=10)
        elapsed = time.monotonic() - started
        for c in clients:
            c.close()
    assert not other
    allowed = capacity + elapsed / fill_interval
    # Never more than the bucket allows; under a continuous flood, nearly all of it.
    assert len(accepted) <= allowed + 1
    assert len(accepted) >= capacity + 0.7 * (1.0 / fill_interval) - 2
    assert len(refused) > 5 * len(accepted)  # it was a flood


# --------------------------------------------------------------------------- oversized messages


def test_oversized_messages_are_refused_and_others_are_served():
    k = testutil.new_kite("math", username="alice", max_message_size=4096)
    k.handle_func("size", lambda r: len(r.args.one().must_string())).disable_authentication()
    with testutil.serve(k):
        bystander = Kite("b", "1.0.0").new_client(k.url)
        bystander.dial_timeout(5)
        attacker = Kite("a", "1.0.0").new_client(k.url)
        attacker.dial_timeout(5)
        with pytest.raises(DisconnectError):  # at once, not after a timeout
            attacker.tell_with_timeout("size", 5, "x" * 10_000)
        attacker.close()
        raw = wsclient.connect(f"ws://127.0.0.1:{k.port}/kite/websocket", timeout=5)
        raw.send_text("x" * 5000)
        assert raw.recv_text() is None and raw.close_code == 1009  # message too big
        response = requests.post(f"{k.url}/000/oversized/xhr_send", data="x" * 5000, timeout=5)
        assert response.status_code == 413
        assert bystander.tell("size", "y" * 100) == 100
        bystander.close()


# --------------------------------------------------------------------------- key files


@pytest.fixture
def open_umask():
    """umask 0: the modes below must come from the code, not from a careful umask."""
    previous = os.umask(0)
    yield
    os.umask(previous)


def test_kite_key_is_written_owner_only_whatever_the_umask(tmp_path, open_umask):
    path = kitekey.write(testutil.new_kite_key("alice"), str(tmp_path / "home" / "kite.key"))
    assert stat.S_IMODE(os.stat(tmp_path / "home").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_reading_a_shared_kite_key_warns(tmp_path, caplog):
    path = tmp_path / "kite.key"
    path.write_text(testutil.new_kite_key("alice"))
    path.chmod(0o600)
    with caplog.at_level(logging.WARNING, logger="kite.kitekey"):
        kitekey.read(str(path))
    assert not caplog.records
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="kite.kitekey"):
        assert kitekey.parse(path=str(path)).username == "alice"  # read, not refused
    assert f"kite.key at {path} has mode 0644" in caplog.text


def test_kontrol_writes_its_generated_key_pair_owner_only(kite_home, open_umask):
    from kontrol import cli

    cli.generated_key_pair()
    public, private = cli._key_pair_paths()
    assert stat.S_IMODE(os.stat(os.path.dirname(private)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(private).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(public).st_mode) == 0o600
