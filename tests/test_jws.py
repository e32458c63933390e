"""kite.wire.jws: PyJWT underneath, our size cap, algorithm rule and error words on top (PROTOCOL.md §5)."""

from __future__ import annotations

import base64
import json

import jwt as pyjwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kite import AuthenticationError, testkeys, testutil
from kite.wire import jws


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def compact(header: dict, claims: dict, signature: bytes = b"sig") -> str:
    return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}.{b64(signature)}"


def test_decode_then_verify_with_the_right_key_only():
    token = testutil.new_token("bob", "/alice")
    jwt = jws.decode_jwt(token)
    assert jwt.raw == token and jwt.header["alg"] == "RS256" and jwt.claims["sub"] == "bob"
    assert jwt.signing_input == token.rsplit(".", 1)[0].encode()
    jws.verify_signature(jwt, jws.load_public_key(testkeys.public_pem()))
    with pytest.raises(jws.SignatureInvalidError, match="signature is invalid"):
        jws.verify_signature(jwt, jws.load_public_key(testkeys.other_key_pair().public_pem))


@pytest.mark.parametrize(("token", "message"), [
    ("a.b", "token contains an invalid number of segments"),
    ("a.b.c.d", "token contains an invalid number of segments"),
    ("é.e30.", "token is malformed: not base64url"),
    ("!!!.e30.", "token is malformed: header is not base64url"),
    (f"{b64(b'{}')}.!!!.", "token is malformed: claims is not base64url"),
    (f"{b64(b'{}')}.e30.***", "token is malformed: signature is not base64url"),
    (f"{b64(b'[1]')}.e30.", "token is malformed: header is not a JSON object"),
    (f"{b64(b'{}')}.{b64(b'[1]')}.", "token is malformed: claims is not a JSON object"),
    (f"{b64(b'{}')}.{b64(b'{nope')}.", "token is malformed: claims is not JSON"),
    (compact({"alg": "RS256", "kid": 5}, {}), "token is malformed: Key ID header parameter must be a string"),
    (compact({"alg": "RS256", "crit": ["exp"]}, {}), "token is malformed: Unsupported critical extension: exp"),
])
def test_pyjwt_refusals_in_our_words(token, message):
    with pytest.raises(AuthenticationError) as e:
        jws.decode_jwt(token)
    assert e.value.message == message and e.value.type == "authenticationError"


def test_only_rs256_and_no_critical_headers():
    key = jws.load_public_key(testkeys.public_pem())
    for alg in ("none", "HS256", "RS512", "PS256", None):
        jwt = jws.decode_jwt(compact({"alg": alg} if alg else {}, {"sub": "x"}))
        with pytest.raises(AuthenticationError, match="invalid signing method"):
            jws.require_rs256(jwt)
        with pytest.raises(AuthenticationError, match="invalid signing method"):
            jws.verify_signature(jwt, key)  # checked again where the signature is
    # Critical headers are refused, by PyJWT or by us (the one extension PyJWT knows, "b64").
    private = testkeys.key_pair().private_key
    for header in ({"crit": ["b64"], "b64": True}, {"crit": ["b64"], "b64": False}, {"crit": []}):
        try:
            signed = pyjwt.encode({"sub": "x"}, private, algorithm="RS256", headers=header)
        except pyjwt.InvalidTokenError:
            continue
        with pytest.raises(AuthenticationError, match="token is malformed"):
            jws.verify_signature(jws.decode_jwt(signed), key)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200),
                 st.lists(st.text(alphabet="ABCDEFabcdef0123456789-_={}[]\":,", max_size=40), min_size=3,
                          max_size=3).map(".".join),
                 st.binary(max_size=100).map(lambda b: f"{b64(b)}.{b64(b)}.{b64(b)}")))
def test_garbage_decodes_or_raises_authentication_error(text):
    try:
        jws.decode_jwt(text)
    except AuthenticationError:
        pass


def test_public_keys_are_parsed_once():
    pem = testkeys.public_pem()
    assert jws.load_public_key(pem) is jws.load_public_key(pem)
    with pytest.raises(ValueError, match="not a PEM public key"):
        jws.load_public_key("nope")
