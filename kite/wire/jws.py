"""RS256 JSON Web Signatures, the primitives: decode a compact token without trusting it,
refuse every algorithm but RS256, check a signature, parse public keys once.

The kite's policy (which keys to trust, time claims, audiences) is in :mod:`kite.auth`.
Every failure here is an :class:`~kite.errors.AuthenticationError` (``ValueError`` for
a PEM that is not an RSA public key).
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from kite.errors import AuthenticationError

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes

#: The only signing algorithm accepted (Kontrol signs kite keys and tokens with it).
ALGORITHM = "RS256"

#: Longest credential accepted, in characters. A kite key carrying a 4096-bit
#: ``kontrolKey`` PEM is about 2.3 KB and Kontrol tokens are under 1 KB; 16 KiB
#: leaves room for extra claims while a peer cannot make us base64- and
#: JSON-decode megabytes on every call.
MAX_JWT_LENGTH = 16 * 1024

#: Parsed RSA public keys kept (one per Kontrol key pair seen).
KEY_CACHE_SIZE = 64

_B64URL = re.compile(r"[A-Za-z0-9_-]*")


@dataclass(frozen=True)
class JWT:
    """A decoded, **not yet verified** JWS compact token."""

    raw: str
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes


def _b64decode(segment: str, what: str) -> bytes:
    if _B64URL.fullmatch(segment) is None:
        raise AuthenticationError(f"token is malformed: {what} is not base64url")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        raise AuthenticationError(f"token is malformed: {what} is not base64url") from None


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        raise AuthenticationError(f"token is malformed: {what} is not JSON") from None
    if not isinstance(value, dict):
        raise AuthenticationError(f"token is malformed: {what} is not a JSON object")
    return value


def decode_jwt(token: Any) -> JWT:
    """Split and decode a compact JWS without verifying it.

    Raises :class:`~kite.errors.AuthenticationError` for anything that is not a
    well-formed token of at most :data:`MAX_JWT_LENGTH` characters.
    """
    if not isinstance(token, str):
        raise AuthenticationError("token is malformed: not a string")
    if len(token) > MAX_JWT_LENGTH:
        raise AuthenticationError(f"token is too long: {len(token)} characters (limit {MAX_JWT_LENGTH})")
    parts = token.split(".")
    if len(parts) != 3:
        raise AuthenticationError("token contains an invalid number of segments")
    header = _json_object(_b64decode(parts[0], "header"), "header")
    claims = _json_object(_b64decode(parts[1], "claims"), "claims")
    signature = _b64decode(parts[2], "signature")
    return JWT(token, header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature)


def require_rs256(jwt: JWT) -> None:
    """Refuse every algorithm but RS256 (and tokens with critical extensions we do not know)."""
    alg = jwt.header.get("alg")
    if alg != ALGORITHM:
        raise AuthenticationError(f"invalid signing method: {alg!r} (only {ALGORITHM} is accepted)")
    if "crit" in jwt.header:
        raise AuthenticationError("token is malformed: unsupported critical header")


def signature_valid(key: rsa.RSAPublicKey, jwt: JWT) -> bool:
    """True if ``jwt`` carries a valid RS256 signature by ``key``."""
    try:
        key.verify(jwt.signature, jwt.signing_input, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


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
