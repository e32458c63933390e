"""RS256 JSON Web Signatures through PyJWT: decode a compact token without trusting it,
refuse every algorithm but RS256, check its signature, parse public keys once.

Parsing (base64url, JSON) is PyJWT's ``jwt.PyJWT.decode_complete``, done **once** per
credential; the signature is checked by PyJWT's RS256 algorithm, taken from a
``jwt.PyJWS(algorithms=["RS256"])`` (no other algorithm is registered in it), over the
segments of that same parse. The key is chosen between the two steps by
:mod:`kite.auth` (a kite key names its Kontrol key in its own claims, as jwt-go's key
function sees them), which is why this is not one ``jwt.decode(token, key, algorithms)``
call: that would parse the token a second time (PyJWT's base64url check runs per byte
in Python, so a second parse doubled the cost of every credential seen for the first
time, and of every forged one; ``bench/jwt_verify.py``).

What is ours sits around PyJWT:

* the size cap (:data:`MAX_JWT_LENGTH`), checked **before** PyJWT sees the text, and a
  segment count and ASCII check that give jwt-go's words for the commonest garbage;
* the algorithm allow-list: :func:`require_rs256`, before any key is looked up, and
  again in :func:`verify_signature`;
* PyJWT's exceptions turned into :class:`~kite.errors.AuthenticationError` with our
  messages (``token is malformed: …``), so that nothing else escapes whatever the peer sends;
* the key objects, parsed once per PEM (:func:`load_public_key`, an LRU cache).

PyJWT checks no claim here: time claims, issuer and audience are the kite's policy, in
:mod:`kite.auth`, which owns the clock (this package reads no clock).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jwt as pyjwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.exceptions import DecodeError, PyJWTError

from kite.errors import AuthenticationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
    from jwt.types import Options

#: The only signing algorithm accepted (Kontrol signs kite keys and tokens with it).
ALGORITHM = "RS256"

#: Longest credential accepted, in characters. A kite key carrying a 4096-bit
#: ``kontrolKey`` PEM is about 2.3 KB and Kontrol tokens are under 1 KB; 16 KiB
#: leaves room for extra claims while a peer cannot make us base64- and
#: JSON-decode megabytes on every call.
MAX_JWT_LENGTH = 16 * 1024

#: Parsed RSA public keys kept (one per Kontrol key pair seen).
KEY_CACHE_SIZE = 64

#: PyJWT options for reading a token: nothing is checked by PyJWT (the signature is checked
#: by :func:`verify_signature`; claims by :mod:`kite.auth`, on its own clock -- PyJWT reads
#: the system clock and words its errors differently from Go).
_UNVERIFIED: Options = {
    "verify_signature": False,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
}
#: The decoder (stateless; its options are passed on every call).
_PYJWT = pyjwt.PyJWT()
#: PyJWT's RS256 verifier, from a PyJWS whose only registered algorithm is RS256.
_RS256 = pyjwt.PyJWS(algorithms=[ALGORITHM]).get_algorithm_by_name(ALGORITHM)

#: PyJWT's names of the three segments, and ours.
_SEGMENTS = {"header": "header", "payload": "claims", "crypto": "signature"}
#: PyJWT's DecodeError texts (``Invalid header padding``, ``Invalid payload string: …``).
_PYJWT_DECODE_ERROR = re.compile(r"Invalid (header|payload|crypto) (padding|string)(: must be a json object)?")


class SignatureInvalidError(AuthenticationError):
    """The token is well formed and RS256 but its signature does not verify with the key."""

    def __init__(self, message: str = "signature is invalid", **kwargs: Any):
        super().__init__(message, **kwargs)


@dataclass(frozen=True)
class JWT:
    """A decoded, **not yet verified** JWS compact token."""

    raw: str
    header: dict[str, Any]
    claims: dict[str, Any]
    signature: bytes

    @property
    def signing_input(self) -> bytes:
        """What the signature covers: ``header.payload``, as sent."""
        return self.raw[: self.raw.rindex(".")].encode("ascii")


def _precheck(token: Any) -> str:
    """Our checks before PyJWT parses anything: a string, not too long, three ASCII segments."""
    if not isinstance(token, str):
        raise AuthenticationError("token is malformed: not a string")
    if len(token) > MAX_JWT_LENGTH:
        raise AuthenticationError(f"token is too long: {len(token)} characters (limit {MAX_JWT_LENGTH})")
    if token.count(".") != 2:
        raise AuthenticationError("token contains an invalid number of segments")
    if not token.isascii():
        raise AuthenticationError("token is malformed: not base64url")
    return token


def _malformed(exc: PyJWTError) -> AuthenticationError:
    """A PyJWT decode failure in our words (its own text when it is not one we know)."""
    match = _PYJWT_DECODE_ERROR.match(str(exc)) if isinstance(exc, DecodeError) else None
    if match is None:
        return AuthenticationError(f"token is malformed: {exc}")
    segment, kind, not_object = _SEGMENTS[match.group(1)], match.group(2), match.group(3)
    if kind == "padding":
        return AuthenticationError(f"token is malformed: {segment} is not base64url")
    if not_object:
        return AuthenticationError(f"token is malformed: {segment} is not a JSON object")
    return AuthenticationError(f"token is malformed: {segment} is not JSON")


def _bad_algorithm(header: dict[str, Any]) -> AuthenticationError:
    return AuthenticationError(f"invalid signing method: {header.get('alg')!r} (only {ALGORITHM} is accepted)")


def decode_jwt(token: Any) -> JWT:
    """Decode a compact JWS with PyJWT without verifying it.

    Raises :class:`~kite.errors.AuthenticationError` for anything that is not a
    well-formed token of at most :data:`MAX_JWT_LENGTH` characters.
    """
    raw = _precheck(token)
    try:
        decoded = _PYJWT.decode_complete(raw, options=_UNVERIFIED)
    except PyJWTError as exc:
        raise _malformed(exc) from None
    return JWT(raw, decoded["header"], decoded["payload"], decoded["signature"])


def require_rs256(jwt: JWT) -> None:
    """Refuse every algorithm but RS256 (and tokens with critical extensions), before any key is trusted."""
    if jwt.header.get("alg") != ALGORITHM:
        raise _bad_algorithm(jwt.header)
    if "crit" in jwt.header:
        raise AuthenticationError("token is malformed: unsupported critical header")


def verify_signature(jwt: JWT, key: rsa.RSAPublicKey) -> None:
    """Check the RS256 signature of ``jwt`` with ``key`` (PyJWT's RS256 algorithm); no claim is checked.

    Raises :class:`SignatureInvalidError` when it does not verify, and
    :class:`~kite.errors.AuthenticationError` for another algorithm.
    """
    require_rs256(jwt)
    if not _RS256.verify(jwt.signing_input, key, jwt.signature):
        raise SignatureInvalidError()


@functools.lru_cache(maxsize=KEY_CACHE_SIZE)
def load_public_key(pem: str) -> rsa.RSAPublicKey:
    """Parse an RSA public key PEM (PKIX, PKCS#1 or a certificate) once; later calls hit the cache.

    Raises ``ValueError`` when the text is not an RSA public key.
    """
    data = pem.encode("utf-8", "replace") if isinstance(pem, str) else pem
    key: PublicKeyTypes
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            key = x509.load_pem_x509_certificate(data).public_key()
        else:
            key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key ({exc})") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    return key
