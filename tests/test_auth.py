"""Authentication end to end: kiteKey and token over real sockets (PROTOCOL.md §5, checklist 17-25, 34).

A served "math" kite of user ``alice`` (environment ``prod``) trusts the test
Kontrol key of :mod:`kite.testkeys`; its verifier runs on a fake clock so time
claims can be tested exactly. Every refusal must come back as an
``authenticationError`` with a clear message while the kite keeps serving.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import subprocess
import sys
import textwrap
import time

import gevent
import pytest

from kite import (
    Auth,
    AuthenticationError,
    Config,
    KeyNotTrustedError,
    Kite,
    KiteKeyError,
    TokenRenewer,
    auth,
    testkeys,
    testutil,
)
from tests.fakeclock import FakeClock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Captured from a real Go kite (2018) talking to a Go Kontrol: alice's kite key
# and a token Kontrol issued for /alice/unknown/math (public data, no secrets).
GO_KITE_KEY = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJqdGkiOiIwYTMyZmI3MC02MzNmLTRlMTQtODFjMy1iMDQ0NDE3N2JkZDQiLCJpYXQiOjE3"
    "OTU4NDcxNjUsImlzcyI6ImtvbnRyb2wiLCJzdWIiOiJhbGljZSIsImtvbnRyb2xLZXkiOiItLS0tLUJFR0lOIFBVQkxJQyBLRVktLS0tLVxuTU"
    "lJQklqQU5CZ2txaGtpRzl3MEJBUUVGQUFPQ0FROEFNSUlCQ2dLQ0FRRUFzWExzTFZJVytPLzBWVnM0MGZKQVxuQW5IL1hKSGk4dTc1amNBSnZv"
    "VjcxN1BNYWhTVFUrb25UMktuYnVJdk1OSUtOcDNtZ3orTlVXMWZ3aFJXNmcvY1xuSzRpMUFtdlR1VTJHem9Nd2pwNmJtcldkTERNbVRaUGpwOD"
    "lxdWFZeVh1V3RTMnpNQ3crSFZlbll4TDZiUDBrQ1xuOGN1Wlk3ams2eEJ0cjFZcGZNYk9sZnBLcGN2YXdOeGduTFZYUnllL2hTN056RHorVjhG"
    "R2U4NjNqaGVnaVVjRFxuTFNzWWVRMTUvak1wTjAreGlERWFkcmJDWGVIVXg1bVprQ3VYLzcrUFEzd3J4c00rUmVoUTRRTTdBRHMzQ1dQRFxudl"
    "p0NTlDWTA0V0U2Zmc4OTBRMVhvNVhkQk1IbFFMNDd5VnRTcWk1OUw0MVNFaytueWFLWEtIK2IxQjVzeFlMd1xuVndJREFRQUJcbi0tLS0tRU5E"
    "IFBVQkxJQyBLRVktLS0tLSIsImtvbnRyb2xVUkwiOiJodHRwOi8vMTI3LjAuMC4xOjYwMDAva2l0ZSJ9.Qjc4gsqiBG85ZIoddraeFStEC5TInJ"
    "tHGlcr3rXg1l4wB4FizyvMQnflBzsVaN5hBbjNmtnCkV4NODiSxlKyQBHIjI17X-tQo_rCHyusWm_LgZSnXldMBCru69wepYi7lb7UTmrkIt-X9"
    "KIfks73C7iYxbFOHo-MSf-Lek68K-UDxZ2tK-i-gxPk1AVlrHb2E5VvQLLF7eDr6MfxT63gphUH5DOISG28rB0c3VplL3teoPyrhgl1FVwZ29De"
    "PCrRN5Q0emZ50Ntycqid3JNrIHEcpoWi-pWCBp-rqXAiDGCroq8_JCxejPR75aQoosZImjboRljvJYDvw9vS4221Rg"
)
GO_TOKEN = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCJ9.eyJhdWQiOiIvYWxpY2UvdW5rbm93bi9tYXRoIiwiZXhwIjoxNzk2MDIwNDIyLCJqdGkiOiIzZGI"
    "3MGVjYy0wODVjLTQwYTEtOGFiZC05ZWNkY2EyMDkzOWIiLCJpYXQiOjE3OTU4NDcwMjIsImlzcyI6ImtvbnRyb2wiLCJuYmYiOjE3OTU4NDcwMj"
    "IsInN1YiI6ImFsaWNlIn0.R0sQu4DiEAHs1iSUFvUMr0DG3FJuB_pGUTHxUIZeMrQ-5qs3Q4tE5lKePn6kwPYzpYOkluMNsEkkC0__dXW8wf25C"
    "Dxs0Jx9xdzNF1-Zk5Md7v4AS5ovsyRKlST0pCRcYJo9VDBFijmA80lsQqbREQJtKQKrA8IWsEe2nNhBPoVC3VtvE3N1iyC4r92Zk1YshhL1mEyQ"
    "hK7BrB30gFONedS2Lt2fp9-h509h3aKxC50d7xZ-EI6QmhPdH48hfQpr2je81z33SsE3lyNmYLbbOcsz0wgLMbzSC98q8SUQC-lmnj8XPW-BIzYf"
    "1CXCQs4Vf0-8tx03xlri2PFh-71x-w"
)
GO_TOKEN_IAT, GO_TOKEN_EXP = 1795847022, 1796020422


# --------------------------------------------------------------------------- helpers


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def forge(header: dict, claims: dict, signature: bytes = b"") -> str:
    """A JWT with any header, unsigned or with a given signature."""
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def tamper(jwt: str, **changes) -> str:
    """Change claims of a signed JWT, keeping its (now wrong) signature."""
    head, body, sig = jwt.split(".")
    payload = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    payload.update(changes)
    return f"{head}.{b64(json.dumps(payload).encode())}.{sig}"


def hs256_with_public_key(claims: dict) -> str:
    """The classic confusion: HMAC-SHA256 keyed with the RSA public key PEM."""
    head = f"{b64(json.dumps({'alg': 'HS256', 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    sig = hmac.new(testkeys.public_pem().encode(), head.encode(), hashlib.sha256).digest()
    return f"{head}.{b64(sig)}"


NOW = 1_800_000_000  # the fake "now" of the served kite's verifier


def claims(**changes) -> dict:
    """Good token claims for alice's prod/math kite at NOW; ``None`` removes a claim."""
    c = {"iss": "kontrol", "sub": "bob", "aud": "/alice/prod/math", "iat": NOW, "nbf": NOW - 60,
         "exp": NOW + 3600, "jti": "j"}
    c.update(changes)
    return {k: v for k, v in c.items() if v is not None}


def token(**changes) -> str:
    return testutil.sign(claims(**changes))


def kite_key(username: str = "alice", **kwargs) -> str:
    return testutil.new_kite_key(username, now=NOW, **kwargs)


# --------------------------------------------------------------------------- the served kite


def whoami(r):
    return {"username": r.username, "peer": r.client.kite.username, "dialed": r.client.dialed}


@pytest.fixture(scope="module")
def clock():
    return FakeClock(NOW)


@pytest.fixture(scope="module")
def math(clock):
    k = testutil.new_kite("math", username="alice", environment="prod")
    k.verifier.clock = clock
    k.handle_func("whoami", whoami)
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("shared", whoami)
    k.allow_other_users("shared")

    @k.method("decorated", other_users=True)
    def decorated(r):
        return r.username

    k.handle_func("open", whoami).disable_authentication()
    with testutil.serve(k):
        yield k


@pytest.fixture
def caller():
    return testutil.new_kite("caller", username="bob")


@pytest.fixture
def client(math, clock, caller):
    clock.now = NOW
    math.verifier.clear_caches()
    c = caller.new_client(math.url)
    c.dial_timeout(5)
    yield c
    c.close()


def refused(c, method="whoami", *args) -> str:
    with pytest.raises(AuthenticationError) as e:
        c.tell(method, *args)
    assert e.value.type == "authenticationError"
    return e.value.message


# --------------------------------------------------------------------------- checklist 17-20


def test_no_authentication_is_refused_and_ping_needs_none(client):
    assert refused(client) == "No authentication information is provided"  # 17
    assert client.tell("kite.ping") == "pong"  # 20
    for builtin in ("kite.systemInfo", "kite.log", "kite.print", "kite.heartbeat"):
        assert refused(client, builtin, "x") == "No authentication information is provided"


def test_unknown_type_is_refused(client):
    client.auth = Auth("xyz", "k")
    assert refused(client) == "Unknown authentication type: xyz"  # 18


def test_valid_token_and_kite_key_are_accepted(client, caller):
    client.auth = Auth("token", token())
    assert client.tell("whoami") == {"username": "bob", "peer": "bob", "dialed": False}
    client.auth = Auth("kiteKey", kite_key("alice"))
    assert client.tell("whoami")["username"] == "alice"
    assert client.tell("square", 3) == 9


def test_authenticated_username_replaces_the_claimed_one(math, caller):
    caller.config.username = "mallory"  # what the peer claims in every call's "kite" field
    with caller.new_client(math.url) as c:
        assert c.tell("open") == {"username": "mallory", "peer": "mallory", "dialed": False}
        c.auth = Auth("token", token(sub="bob"))
        assert c.tell("whoami") == {"username": "bob", "peer": "bob", "dialed": False}
        c.auth = None
        # later unauthenticated methods see the authenticated name, not the claim
        assert c.tell("open")["username"] == "bob"


def test_methods_open_by_config_or_per_method_and_builtins_stay_closed(caller):
    k = testutil.new_kite("math", username="alice")
    k.handle_func("closed", lambda r: 1)
    k.config.disable_authentication = True  # captured at registration, as in Go
    k.handle_func("open", lambda r: 2)
    k.config.disable_authentication = False
    k.handle_func("also_open", lambda r: 3).disable_authentication()
    with testutil.serve(k), caller.new_client(k.url) as c:
        assert c.tell("open") == 2 and c.tell("also_open") == 3
        assert refused(c, "closed") == "No authentication information is provided"
        assert refused(c, "kite.systemInfo") == "No authentication information is provided"


def test_custom_authenticator(math, client):
    sessions = {"s3cr3t": "carol"}

    def from_session(request):
        try:
            request.username = sessions[request.auth.key]
        except KeyError:
            raise AuthenticationError("unknown session") from None

    math.authenticators["sessionID"] = from_session
    try:
        client.auth = Auth("sessionID", "s3cr3t")
        assert client.tell("whoami")["username"] == "carol"
        client.auth = Auth("sessionID", "nope")
        assert refused(client) == "sessionID: unknown session"
    finally:
        del math.authenticators["sessionID"]


# --------------------------------------------------------------------------- refusals


ONE_MB = "a" * (1024 * 1024)
TOKEN_REFUSALS = {
    "unsigned": (lambda: forge({"alg": "RS256", "typ": "JWT"}, claims()), "token: token is expired"),
    "alg-none": (lambda: forge({"alg": "none", "typ": "JWT"}, claims()),
                 "token: invalid signing method: 'none' (only RS256 is accepted)"),
    "hs256-public-key": (lambda: hs256_with_public_key(claims()),
                         "token: invalid signing method: 'HS256' (only RS256 is accepted)"),
    "rs512": (lambda: testutil.sign(claims(), algorithm="RS512"), "token: invalid signing method: 'RS512'"),
    "foreign-key": (lambda: testutil.sign(claims(), testkeys.other_key_pair()), "token: token is expired"),
    "tampered": (lambda: tamper(token(), sub="alice"), "token: token is expired"),
    "expired": (lambda: token(exp=NOW - 65), "token: token is expired by 1m5s"),
    "not-yet-valid": (lambda: token(nbf=NOW + 60), "token: token is not valid yet"),
    "issued-in-future": (lambda: token(iat=NOW + 60), "token: Token used before issued"),
    "wrong-issuer": (lambda: token(iss="mallory"), "token: issuer is not trusted: mallory"),
    "no-issuer": (lambda: token(iss=None), "token: issuer is not trusted: "),
    "wrong-aud-user": (lambda: token(aud="/carol/prod/math"),
                       'token: audience: username "carol" not allowed (/carol/prod/math)'),
    "wrong-aud-env": (lambda: token(aud="/alice/dev/math"),
                      'token: audience: environment "dev" not allowed (/alice/dev/math)'),
    "wrong-aud-name": (lambda: token(aud="/alice/prod/other"),
                       'token: audience: kite "other" not allowed (/alice/prod/other)'),
    "aud-not-a-path": (lambda: token(aud="alice"), "token: invalid audience"),
    "no-audience": (lambda: token(aud=None), "token: token has no audience"),
    "aud-list": (lambda: token(aud=["/alice/prod/math"]), "token: token has no audience"),
    "empty-subject": (lambda: token(sub=""), "token: token has no username"),
    "no-subject": (lambda: token(sub=None), "token: token has no username"),
    "no-expiry": (lambda: token(exp=None), "token: token has no expiration time"),
    "exp-not-a-number": (lambda: token(exp="tomorrow"), "token: token is malformed: exp is not a number"),
    "garbage": (lambda: "garbage", "token: token contains an invalid number of segments"),
    "empty": (lambda: "", "token: token contains an invalid number of segments"),
    "bad-base64": (lambda: "!!!.???.***", "token: token is malformed: header is not base64url"),
    "header-not-json": (lambda: f"{b64(b'{nope')}.e30.", "token: token is malformed: header is not JSON"),
    "header-array": (lambda: f"{b64(b'[]')}.e30.", "token: token is malformed: header is not a JSON object"),
    "deep-json": (lambda: f"{b64(b'[' * 5000)}.e30.", "token: token is malformed: header is not JSON"),
    "one-megabyte": (lambda: ONE_MB, "token: token is too long: 1048576 characters (limit 16384)"),
}


KITE_KEY_REFUSALS = {
    "other-user": (lambda: kite_key("bob"),
                   'kiteKey: user "bob" may not call "whoami": this kite accepts kite keys of "alice" only'),
    "untrusted-kontrol": (lambda: kite_key(key_pair=testkeys.other_key_pair()), "kiteKey: kontrol key is not trusted"),
    "claims-our-key-signed-by-another": (
        lambda: kite_key(key_pair=testkeys.other_key_pair(), kontrol_key=testkeys.public_pem()),
        "kiteKey: signature is invalid"),
    "expired": (lambda: kite_key(ttl=-120), "kiteKey: token is expired by 2m0s"),
    "no-kontrol-key": (lambda: kite_key(kontrol_key=""), "kiteKey: no kontrol key found"),
    "empty-subject": (lambda: kite_key(""), "kiteKey: token has no username"),
    "alg-none": (lambda: forge({"alg": "none"}, {"sub": "alice", "kontrolKey": testkeys.public_pem()}),
                 "kiteKey: invalid signing method: 'none'"),
    "hs256-public-key": (lambda: hs256_with_public_key({"sub": "alice", "kontrolKey": testkeys.public_pem()}),
                         "kiteKey: invalid signing method: 'HS256'"),
    "garbage": (lambda: "x.y", "kiteKey: token contains an invalid number of segments"),
    "one-megabyte": (lambda: ONE_MB, "kiteKey: token is too long"),
}

#: Auth type -> (its refusal cases, a good credential of that type).
REFUSALS = {"token": (TOKEN_REFUSALS, token), "kiteKey": (KITE_KEY_REFUSALS, lambda: kite_key("alice"))}


@pytest.mark.parametrize(("auth_type", "case"), [(t, case) for t, (cases, _) in REFUSALS.items() for case in cases])
def test_bad_credentials_are_refused_and_the_kite_keeps_serving(client, auth_type, case):
    cases, good = REFUSALS[auth_type]
    make, message = cases[case]
    client.auth = Auth(auth_type, make())
    assert refused(client).startswith(message)
    client.auth = Auth(auth_type, good())
    assert client.tell("square", 5) == 25  # same connection, still served


def test_untrusted_kontrol_key_is_remembered(client):
    client.auth = Auth("kiteKey", kite_key(key_pair=testkeys.other_key_pair()))
    assert refused(client) == "kiteKey: kontrol key is not trusted"
    assert refused(client) == "kiteKey: invalid kontrol key found"  # cached refusal, as in Go


def test_leeway_on_time_claims(client, clock, math):
    leeway = math.config.auth_leeway
    client.auth = Auth("token", token(exp=NOW))
    clock.now = NOW + leeway - 1
    assert client.tell("whoami")["username"] == "bob"
    clock.now = NOW + leeway + 1
    assert refused(client).startswith("token: token is expired by")
    client.auth = Auth("token", token(nbf=NOW + leeway - 1, iat=NOW + leeway - 1))
    clock.now = NOW
    assert client.tell("whoami")["username"] == "bob"


def test_kontrol_key_not_set(caller):
    k = Kite("math", "1.0.0", config=Config(ip="127.0.0.1", username="alice"))
    k.handle_func("whoami", whoami)
    with testutil.serve(k), caller.new_client(k.url) as c:
        c.auth = Auth("token", testutil.new_token("bob", "/alice"))
        assert refused(c) == "token: kontrol key is not set in config"
        c.auth = Auth("kiteKey", testutil.new_kite_key("alice"))
        assert refused(c) == "kiteKey: kontrol key is not trusted"


# --------------------------------------------------------------------------- strict kite keys


def test_other_users_only_where_allowed(client, math):
    client.auth = Auth("kiteKey", kite_key("bob"))
    assert refused(client).startswith('kiteKey: user "bob" may not call "whoami"')
    assert client.tell("shared")["username"] == "bob"  # k.allow_other_users("shared")
    assert client.tell("decorated") == "bob"  # @k.method(..., other_users=True)
    math.config.kite_key_any_user = True  # the original's behaviour
    try:
        assert client.tell("whoami")["username"] == "bob"
    finally:
        math.config.kite_key_any_user = False
    # tokens are bound by their audience instead: bob may call alice's kite with one
    client.auth = Auth("token", token(sub="bob"))
    assert client.tell("whoami")["username"] == "bob"


# --------------------------------------------------------------------------- trust, caches


def new_verifier_kite(**config) -> tuple[Kite, FakeClock]:
    k = testutil.new_kite("math", username="alice", environment="prod", **config)
    clock = FakeClock(NOW)
    k.verifier.clock = clock
    return k, clock


def test_verify_func_decisions_are_cached_for_verify_ttl():
    calls = []

    def trust_other(pem):
        calls.append(pem)
        if pem != testkeys.other_key_pair().public_pem:
            raise KeyNotTrustedError()

    k, clock = new_verifier_kite(verify_func=trust_other, verify_ttl=60)
    foreign = kite_key(key_pair=testkeys.other_key_pair())
    foreign2 = kite_key(key_pair=testkeys.other_key_pair())
    assert k.authenticate_simple_kite_key(foreign) == "alice"
    assert k.authenticate_simple_kite_key(foreign2) == "alice"
    assert len(calls) == 1  # one trust decision for both keys
    clock.now += 61
    assert k.authenticate_simple_kite_key(foreign2) == "alice"
    assert len(calls) == 2
    with pytest.raises(AuthenticationError, match="kontrol key is not trusted"):
        k.authenticate_simple_kite_key(kite_key())
    with pytest.raises(AuthenticationError, match="invalid kontrol key found"):
        k.authenticate_simple_kite_key(kite_key())
    assert len(calls) == 3


def test_negative_verify_ttl_disables_the_trust_cache():
    calls = []
    k, _ = new_verifier_kite(verify_func=calls.append, verify_ttl=-1)
    key = kite_key()
    for _ in range(3):
        assert k.authenticate_simple_kite_key(key) == "alice"
    assert len(calls) == 3


def test_verify_func_errors_pass_through_uncached():
    def broken(pem):
        raise RuntimeError("kontrol unreachable")

    k, _ = new_verifier_kite(verify_func=broken)
    for _ in range(2):
        with pytest.raises(AuthenticationError, match=": kontrol unreachable$"):
            k.authenticate_simple_kite_key(kite_key())


def test_custom_audience_func():
    seen = []

    def only_root(kite, audience):
        seen.append((kite.name, audience))
        if audience != "/":
            raise AuthenticationError("only root tokens here")

    k, _ = new_verifier_kite(verify_audience_func=only_root)
    assert k.verifier.verify_token(token(aud="/")) == "bob"
    with pytest.raises(AuthenticationError, match="only root tokens here"):
        k.verifier.verify_token(token())
    assert seen == [("math", "/"), ("math", "/alice/prod/math")]


@pytest.mark.parametrize("audience", ["/", "/alice", "/alice/prod", "/alice//math", "/alice/prod/math/9.9.9/r/h/i"])
def test_audiences_that_match(audience):
    k, _ = new_verifier_kite()
    assert k.verifier.verify_token(token(aud=audience)) == "bob"


def test_verified_tokens_are_cached_until_expiry_or_rotation():
    k, clock = new_verifier_kite()
    t = token(exp=NOW + 100)
    assert k.verifier.verify_token(t) == "bob"
    assert len(k.verifier._results) == 1
    assert k.verifier.verify_token(t) == "bob"  # cache hit
    clock.now = NOW + 100 + k.config.auth_leeway + 1
    with pytest.raises(AuthenticationError, match="token is expired by"):
        k.verifier.verify_token(t)
    clock.now = NOW
    k.config.kontrol_key = testkeys.other_key_pair().public_pem  # rotation invalidates the cache
    with pytest.raises(AuthenticationError, match=": token is expired$"):
        k.verifier.verify_token(t)


def test_result_cache_is_bounded():
    k, _ = new_verifier_kite()
    k.verifier._results.maxsize = 3
    for i in range(5):
        k.verifier.verify_token(token(jti=str(i)))
    assert len(k.verifier._results) == 3


def test_rsa_keys_are_parsed_once():
    k, _ = new_verifier_kite()
    assert k.kontrol_key() is k.kontrol_key()
    assert k.rsa_key(token()) is k.kontrol_key()
    before = auth.load_public_key.cache_info().hits
    for _ in range(3):
        k.authenticate_simple_kite_key(kite_key(jti=str(_)))
    assert auth.load_public_key.cache_info().hits >= before + 3
    with pytest.raises(AuthenticationError, match="issuer is not trusted: x"):
        k.rsa_key(token(iss="x"))


def test_go_duration():
    assert [auth.go_duration(s) for s in (0, 5, 65, 3600, 3723, -3)] == ["0s", "5s", "1m5s", "1h0m0s", "1h2m3s", "-3s"]


# --------------------------------------------------------------------------- real Go material


def test_go_kite_key_and_token_verify():
    claims_ = auth.kite_key_claims(GO_KITE_KEY, now=GO_TOKEN_IAT + 200)
    assert (claims_["sub"], claims_["iss"]) == ("alice", "kontrol")
    config = Config(username="alice", environment="unknown", kontrol_user=claims_["iss"],
                    kontrol_key=claims_["kontrolKey"], kite_key=GO_KITE_KEY)
    k = Kite("math", "1.0.0", config=config)
    clock = FakeClock(GO_TOKEN_IAT + 200)  # the kite key was issued 143 s after the token
    k.verifier.clock = clock
    assert k.verifier.verify_token(GO_TOKEN) == "alice"
    assert k.authenticate_simple_kite_key(GO_KITE_KEY) == "alice"
    k.verifier.clear_caches()
    clock.now = GO_TOKEN_EXP + 125
    with pytest.raises(AuthenticationError, match=": token is expired by 2m5s$"):
        k.verifier.verify_token(GO_TOKEN)
    other = Kite("other", "1.0.0", config=config)
    other.verifier.clock = FakeClock(GO_TOKEN_IAT + 10)
    with pytest.raises(AuthenticationError, match='audience: kite "math" not allowed'):
        other.verifier.verify_token(GO_TOKEN)


# --------------------------------------------------------------------------- key rotation (34)


def test_update_auth_adopts_a_resigned_kite_key(math, caller):
    k, clock = new_verifier_kite()
    new_pair = testkeys.other_key_pair()
    old_key = k.kite_key()
    unrelated = k.new_client("http://127.0.0.1:1/kite")
    unrelated.auth = Auth("token", "t")
    kontrol_client = k.new_client("http://127.0.0.1:1/kite")
    kontrol_client.auth = Auth("kiteKey", old_key)
    assert k.verifier.verify_token(token()) == "bob"

    with pytest.raises(KiteKeyError):
        k.update_auth(kite_key="garbage")
    assert k.kite_key() == old_key

    resigned = testutil.new_kite_key("alice", key_pair=new_pair)
    k.update_auth(kite_key=resigned)
    assert k.kite_key() == resigned and k.config.kontrol_key == new_pair.public_pem
    assert kontrol_client.auth.key == resigned and unrelated.auth.key == "t"
    assert k.verifier.verify_token(testutil.sign(claims(), new_pair)) == "bob"
    with pytest.raises(AuthenticationError, match=": token is expired$"):  # callers renew
        k.verifier.verify_token(token())
    assert k.authenticate_simple_kite_key(testutil.new_kite_key("alice", key_pair=new_pair, now=NOW)) == "alice"

    k.update_auth(public_key=testkeys.public_pem())
    assert k.verifier.verify_token(token()) == "bob"
    with pytest.raises(ValueError):
        k.update_auth(public_key="not a pem")
    assert k.config.kontrol_key == testkeys.public_pem()


# --------------------------------------------------------------------------- dialed connections (21)


def test_calls_on_a_connection_this_kite_dialed_skip_authentication(math, caller):
    # A "Kontrol" that calls back over the connection the kite dialed, with
    # "authentication": null, as Kontrol does for kite.heartbeat.
    kontrol = testutil.new_kite("kontrol", username="alice")
    pings = []
    kontrol.handle_func("register", lambda r: (r.client.tell("kite.heartbeat", 1, lambda: pings.append(1)),
                                               r.client.tell("whoami"))[1])
    alice = testutil.new_kite("mykite", username="alice")
    alice.handle_func("whoami", whoami)
    with testutil.serve(kontrol), testutil.serve(alice):
        with alice.new_client(kontrol.url) as c:
            c.auth = Auth("kiteKey", alice.kite_key())
            assert c.tell("register") == {"username": "", "peer": "", "dialed": True}
            assert pings == [1]
        # The same call on a connection the peer dialed needs credentials.
        with kontrol.new_client(alice.url) as c:
            assert refused(c) == "No authentication information is provided"
            assert refused(c, "kite.heartbeat", 1, lambda: None) == "No authentication information is provided"


# --------------------------------------------------------------------------- renew and retry (25)


def test_expired_token_is_renewed_and_the_call_retried_once(client, math):
    expired, renewed = [], []
    client.on_token_expire(lambda c: expired.append(1))
    client.on_token_renew(renewed.append)
    client.auth = Auth("token", testutil.sign(claims(), testkeys.other_key_pair()))  # "token is expired"
    source = testutil.token_source("bob", "/alice/prod/math", now=NOW)
    renewer = TokenRenewer(client, source)
    assert client.token_renewer is renewer
    assert client.tell("whoami")["username"] == "bob"
    gevent.sleep(0.05)
    assert expired == [1] and renewed == source.issued and len(source.issued) == 1
    assert client.auth == Auth("token", source.issued[0])

    # A renewed token that is still refused: one retry only, then the error.
    bad_source = testutil.token_source("bob", "/alice/prod/math", now=NOW, key_pair=testkeys.other_key_pair())
    renewer.token_source = bad_source
    client.auth = Auth("token", testutil.sign(claims(), testkeys.other_key_pair()))
    assert refused(client) == "token: token is expired"
    assert len(bad_source.issued) == 1


def test_without_a_renewer_the_expired_error_is_raised(client):
    expired = []
    client.on_token_expire(lambda c: expired.append(1))
    client.auth = Auth("token", token(exp=NOW - 600))
    assert refused(client) == "token: token is expired by 10m0s"
    gevent.sleep(0.05)
    assert expired == [1]


def test_renew_loop_and_retry_do_not_fetch_twice(client):
    client.auth = Auth("token", testutil.sign(claims(), testkeys.other_key_pair()))
    source = testutil.token_source("bob", "/alice/prod/math", now=NOW)
    renewer = TokenRenewer(client, source, clock=FakeClock(NOW))
    renewer.renew_when_expires()  # loop running, next renewal in ~1 h (fake clock)
    assert client.tell("whoami")["username"] == "bob"
    gevent.sleep(0.1)
    assert len(source.issued) == 1
    renewer.stop()


# --------------------------------------------------------------------------- two processes

SERVER_SCRIPT = """
    from gevent import monkey; monkey.patch_all()
    import gevent
    from kite import Kite
    k = Kite("math", "1.0.0")  # kite.key from KITE_HOME, 127.0.0.1:0 from KITE_IP/KITE_PORT
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("whoami", lambda r: [r.username, r.client.kite.username])
    g = gevent.spawn(k.run)
    k.server_ready_notify().wait(10)
    print("READY", k.port, k.config.username, flush=True)
    g.join()
"""


@pytest.fixture
def math_process(kite_home):
    testutil.write_kite_key(str(kite_home), "alice")  # shared with this process's kites below
    env = {**os.environ, "PYTHONPATH": ROOT, "KITE_HOME": str(kite_home), "KITE_IP": "127.0.0.1", "KITE_PORT": "0"}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(SERVER_SCRIPT)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    try:
        line = ""
        with gevent.Timeout(20, False):
            line = proc.stdout.readline()
        assert line.startswith("READY "), f"no READY line: {line!r}\n{proc.stderr.read() if proc.poll() else ''}"
        _, port, username = line.split()
        assert username == "alice"
        yield f"http://127.0.0.1:{port}/kite"
    finally:
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()
        proc.stderr.close()


def test_kite_to_kite_across_processes(math_process):
    caller = Kite("caller", "1.0.0")  # loads the same kite.key: user alice, same Kontrol
    assert caller.config.username == "alice"
    with caller.new_client(math_process) as c:
        c.auth = Auth("kiteKey", caller.kite_key())
        assert c.tell("square", 7) == 49
        assert c.tell("whoami") == ["alice", "alice"]
        c.auth = Auth("kiteKey", testutil.new_kite_key("bob"))
        assert refused(c).startswith('kiteKey: user "bob" may not call "whoami"')

        # Tokens with a short TTL, renewed in the background before they expire.
        source = testutil.token_source("bob", "/alice/unknown/math", ttl=2)
        c.auth = Auth("token", source(c))
        renewed = []
        c.on_token_renew(renewed.append)
        renewer = TokenRenewer(c, source, renew_before=1.5, min_interval=0.3)
        renewer.renew_when_expires()
        first_exp = auth.token_expiry(c.auth.key)
        deadline = time.monotonic() + 6
        while auth.token_expiry(c.auth.key) < first_exp + 2 and time.monotonic() < deadline:
            assert c.tell("whoami") == ["bob", "bob"]  # never refused: renewed before expiry
            gevent.sleep(0.1)
        renewer.stop()
        assert auth.token_expiry(c.auth.key) >= first_exp + 2  # the first token has expired by now
        assert len(renewed) >= 2 and c.auth.key == renewed[-1] == source.issued[-1]
        assert c.tell("whoami") == ["bob", "bob"]
