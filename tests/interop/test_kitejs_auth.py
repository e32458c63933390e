"""Token (and kiteKey) authentication between kite.js 1.0.13 and Python kites.

* kite.js client -> Python kite: client.js sends ``--auth-type T --auth-key K``
  verbatim as ``authentication``; the Python kite accepts valid credentials and
  answers bad ones with Go-style ``authenticationError`` replies.
* Python client -> kite.js server: server.js ``--kite-key FILE`` makes kite.js
  verify ``token`` credentials with the ``kontrolKey`` of that kite key (RS256,
  ``exp``/``nbf`` only). kite.js answers a refusal as a *result*
  ``{"error": {"message": ...}}`` (KITEJS.md §4-5), not as an error.

All keys are the throw-away ones of :mod:`kite.testkeys`.
"""

from __future__ import annotations

import pytest

from kite import Auth, Kite, testkeys, testutil
from tests.interop.conftest import run_kitejs_client, start_kitejs_server

# --------------------------------------------------------------------------- kite.js client -> Python


@pytest.fixture(scope="module")
def py_auth_kite():
    """A Python "math" kite of user alice (environment prod) with authentication on."""
    k = testutil.new_kite("math", username="alice", environment="prod")
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("whoami", lambda r: {"username": r.username, "peer": r.client.kite.username})
    with testutil.serve(k):
        yield k


def call_with(kite: Kite, method: str, args, auth_type: str | None = None, key: str | None = None):
    extra = ["--auth-type", auth_type, "--auth-key", key] if auth_type else []
    return run_kitejs_client(kite.url, method, args, *extra)


def test_kitejs_token_is_accepted(py_auth_kite):
    token = testutil.new_token("bob", testutil.audience_for(py_auth_kite))
    rc, out, err = call_with(py_auth_kite, "square", [4], "token", token)
    assert (rc, out) == (0, 16), err
    rc, out, err = call_with(py_auth_kite, "whoami", [], "token", token)
    # the kite.js client claims "anonymous"; the token's subject replaces it
    assert (rc, out) == (0, {"username": "bob", "peer": "bob"}), err


def test_kitejs_kite_key_is_accepted(py_auth_kite):
    rc, out, err = call_with(py_auth_kite, "whoami", [], "kiteKey", testutil.new_kite_key("alice"))
    assert (rc, out) == (0, {"username": "alice", "peer": "alice"}), err


@pytest.mark.parametrize(
    "auth_type, make_key, message",
    [
        (None, None, "No authentication information is provided"),
        ("token", lambda k: testutil.new_token("bob", testutil.audience_for(k), ttl=-125),
         "token: token is expired by 2m"),
        ("token", lambda k: testutil.new_token("bob", testutil.audience_for(k), key_pair=testkeys.other_key_pair()),
         "token: token is expired"),
        ("token", lambda k: testutil.new_token("bob", "/alice/prod/other"),
         'token: audience: kite "other" not allowed (/alice/prod/other)'),
        ("token", lambda k: testutil.new_token("bob", testutil.audience_for(k), issuer="mallory"),
         "token: issuer is not trusted: mallory"),
        ("token", lambda k: "garbage", "token: token contains an invalid number of segments"),
        ("kiteKey", lambda k: testutil.new_kite_key("bob"), 'kiteKey: user "bob" may not call "square"'),
        ("sessionID", lambda k: "s", "Unknown authentication type: sessionID"),
    ],
    ids=["none", "expired", "foreign-key", "wrong-audience", "wrong-issuer", "garbage", "other-user", "unknown-type"],
)
def test_kitejs_bad_credentials_are_refused(py_auth_kite, auth_type, make_key, message):
    key = make_key(py_auth_kite) if make_key else None
    rc, out, err = call_with(py_auth_kite, "square", [4], auth_type, key)
    assert rc == 1, (out, err)
    assert out["type"] == "authenticationError" and out["code"] == ""
    assert out["message"].startswith(message)
    # and the kite keeps serving
    with Kite("caller", "1.0.0").new_client(py_auth_kite.url) as c:
        c.auth = Auth("token", testutil.new_token("bob", testutil.audience_for(py_auth_kite)))
        assert c.tell_with_timeout("square", 5, 5) == 25


# --------------------------------------------------------------------------- Python client -> kite.js


@pytest.fixture(scope="module")
def kitejs_auth_server(tmp_path_factory):
    """kite.js "math" (user kitejs, environment test) verifying tokens with the test Kontrol key."""
    path = testutil.write_kite_key(str(tmp_path_factory.mktemp("kitejs-key")), "kitejs")
    with start_kitejs_server("sockjs", "--kite-key", path) as server:
        yield server


@pytest.fixture
def kitejs_client(kitejs_auth_server):
    c = Kite("caller", "1.0.0").new_client(kitejs_auth_server.url)
    c.dial_timeout(10)
    yield c
    c.close()
    assert kitejs_auth_server.alive(), kitejs_auth_server.stderr_text()


def test_python_token_is_accepted_by_kitejs(kitejs_client):
    token = testutil.new_token("bob", "/kitejs/test/math")
    kitejs_client.auth = Auth("token", token)
    assert kitejs_client.tell_with_timeout("square", 5, 6) == 36
    seen = kitejs_client.tell_with_timeout("whoami", 5)
    assert seen["authentication"] == {"type": "token", "key": token}
    assert seen["token"]["headers"] == {"alg": "RS256", "typ": "JWT"}
    assert seen["token"]["claims"]["sub"] == "bob" and seen["token"]["claims"]["aud"] == "/kitejs/test/math"


@pytest.mark.parametrize(
    "make_token, message",
    [
        (lambda: testutil.new_token("bob", "/", key_pair=testkeys.other_key_pair()), "Signature verification failed"),
        (lambda: testutil.new_token("bob", "/", ttl=-100), "Token expired"),
        (lambda: "garbage", "Not enough or too many segments"),
    ],
    ids=["foreign-key", "expired", "garbage"],
)
def test_kitejs_refuses_bad_python_tokens(kitejs_client, make_token, message):
    kitejs_client.auth = Auth("token", make_token())
    # kite.js reports an authentication failure as a result, not as an error
    assert kitejs_client.tell_with_timeout("square", 5, 6) == {"error": {"message": message}}
    kitejs_client.auth = Auth("token", testutil.new_token("bob", "/"))
    assert kitejs_client.tell_with_timeout("square", 5, 6) == 36
