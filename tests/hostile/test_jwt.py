"""Hostile credentials (kite.wire.jws and the policy on top in kite.auth).

Tokens and kite keys arrive as any string a caller likes. Decoding without trusting, the
RS256 check, the time claims and both verifiers either accept or raise
``AuthenticationError``, whatever the sizes, base64, JSON, headers, algorithms or claim types.
"""

import base64
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kite import auth, testutil
from kite.errors import AuthenticationError
from kite.wire import jws
from kite.wire.protocol import KiteIdentity

from .strategies import examples, json_values, mutated, parses_or_refuses, scalars, to_json_text


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def verifying_kite():
    """alice's kite trusting the test Kontrol: its verifier checks kite keys and tokens."""
    k = testutil.new_kite("math", username="alice")
    yield k
    k.close()


#: Claims of the right names with values of any type.
hostile_claims = st.dictionaries(
    st.sampled_from(["iss", "sub", "aud", "exp", "iat", "nbf", "kontrolKey", "jti", "kontrolURL"]),
    st.one_of(scalars, st.sampled_from([float("inf"), float("-inf"), float("nan")]), json_values),
    max_size=6,
)
#: Headers of the right names with values of any type.
hostile_headers = st.dictionaries(
    st.sampled_from(["alg", "typ", "kid", "crit"]),
    st.one_of(st.sampled_from(["RS256", "none", "HS256", "RS512", "ES256"]), json_values),
    max_size=3,
)


@st.composite
def forged_tokens(draw: st.DrawFn) -> str:
    """Three segments of base64url, any header and claims, a signature of garbage."""
    header = to_json_text(draw(st.one_of(hostile_headers, json_values))).encode()
    claims = to_json_text(draw(st.one_of(hostile_claims, json_values))).encode()
    signature = draw(st.binary(max_size=300))
    return ".".join((b64(header), b64(claims), b64(signature)))


@pytest.fixture(scope="module")
def genuine():
    """A valid token and kite key for alice, and claims re-signed with hostile values."""
    return [testutil.new_token("alice", "/alice"), testutil.new_kite_key("alice")]


credentials = st.one_of(forged_tokens(), mutated(forged_tokens()), st.text(max_size=40), st.sampled_from(
    ["", "..", "a.b.c", "a.b", "a.b.c.d", "=.=.=", "\u00e9.\u00e9.\u00e9", "a" * (jws.MAX_JWT_LENGTH + 1)]
))


def check_everything(kite, token):
    """Every entry point a received credential reaches; each may only refuse with AuthenticationError."""
    jwt = parses_or_refuses(jws.decode_jwt, token)
    if jwt is not None:
        parses_or_refuses(jws.require_rs256, jwt)
        parses_or_refuses(auth.check_time_claims, jwt.claims, 1_700_000_000.0)
    parses_or_refuses(auth.token_expiry, token)
    parses_or_refuses(auth.kite_key_claims, token)
    parses_or_refuses(kite.verifier.verify_token, token)
    parses_or_refuses(kite.verifier.verify_kite_key, token)


@examples(200)
@given(credentials)
def test_any_credential_is_verified_or_refused(verifying_kite, token):
    check_everything(verifying_kite, token)


@examples(80)
@given(st.data())
def test_genuine_credentials_mutated_are_verified_or_refused(verifying_kite, genuine, data):
    token = data.draw(mutated(st.sampled_from(genuine)))
    check_everything(verifying_kite, token)


@examples(60)
@given(hostile_claims, st.sampled_from(["token", "kite key"]))
def test_signed_tokens_with_hostile_claims_are_verified_or_refused(verifying_kite, claims, kind):
    # Signed by the trusted test Kontrol: the policy checks after the signature see these values.
    base = {"iss": testutil.KONTROL_USER, "sub": "alice", "aud": "/alice", "exp": 4_000_000_000}
    if kind == "kite key":
        base = {"iss": testutil.KONTROL_USER, "sub": "alice", "kontrolKey": verifying_kite.config.kontrol_key}
    try:
        token = testutil.sign({**base, **claims})
    except (TypeError, ValueError):  # PyJWT cannot encode it: no peer can send it either
        return
    check_everything(verifying_kite, token)


@examples(100)
@given(st.one_of(st.text(max_size=40), st.sampled_from(["/", "//", "/alice//math", "/alice/" + "x" * 5000])))
def test_audiences_are_accepted_or_refused(audience):
    parses_or_refuses(auth.verify_audience, KiteIdentity(username="alice", environment="e", name="n"), audience)


@pytest.mark.parametrize("value", [float("-inf"), float("inf"), float("nan"), 10**400, -(10**400)])
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_regression_time_claims_out_of_float_range(claim, value):
    # exp = -Infinity: int(-inf) raised OverflowError; exp = 10**400: float() raised OverflowError
    with pytest.raises(AuthenticationError, match="is not a number"):
        auth.check_time_claims({claim: value}, 1_700_000_000.0)


def test_regression_token_expiry_of_a_huge_exp():
    token = b64(b'{"alg":"RS256"}') + "." + b64(json.dumps({"exp": 10**400}).encode()) + ".AA"
    with pytest.raises(AuthenticationError):
        auth.token_expiry(token)


def test_regression_self_signed_kite_key_with_infinite_exp():
    key = testutil.new_kite_key("alice", exp=float("-inf"))  # PyJWT writes -Infinity
    with pytest.raises(AuthenticationError, match="exp is not a number"):
        auth.kite_key_claims(key)
