"""The tunnel proxy's own tokens: which tunnel a kite's ``/tunnel`` WebSocket belongs to (PROTOCOL.md §8.5).

When a caller opens ``/proxy?kiteID=<id>``, the proxy signs, with its own RSA key pair,
an RS256 JWT ``{"sub": <kite id>, "seq": <tunnel number>, "iat", "nbf", "exp"}`` and sends
it to that kite inside the ``kite.tunnel`` URL; the kite's WebSocket to ``/tunnel`` brings
it back. Only the proxy reads these tokens, so their lifetime is its own: Go's lasts an
hour; ours lasts as long as a tunnel may take to start plus the clock leeway, and each
opens its tunnel once (the proxy forgets the tunnel number as it is claimed).

Without a key pair of its own (``--public-key/--private-key``) the proxy makes one at
start: the tokens live only for seconds and never leave the proxy and its kites, so
nothing else needs the key.
"""

from __future__ import annotations

import time

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kite.errors import AuthenticationError
from kite.wire.jws import ALGORITHM, MAX_JWT_LENGTH

#: Seconds a token is good for: the time a kite has to dial its tunnel, and then some.
TOKEN_TTL = 60.0
#: Clock skew allowed either side (Go's tunnel proxy: one minute).
LEEWAY = 60.0
#: Size of a generated key pair, bits.
KEY_BITS = 2048


def generate_key_pair() -> tuple[str, str]:
    """A fresh RSA key pair as PEM text: ``(private, public)``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.PEM,
                                           serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    return private, public


class TunnelTokens:
    """Signs and checks tunnel tokens with one key pair (PEM text; both ``None``: a fresh one)."""

    def __init__(self, private_pem: str | None = None, public_pem: str | None = None, *,
                 ttl: float = TOKEN_TTL, leeway: float = LEEWAY):
        if (private_pem is None) != (public_pem is None):
            raise ValueError("give both the private and the public key, or neither")
        if private_pem is None or public_pem is None:
            private_pem, public_pem = generate_key_pair()
        private = serialization.load_pem_private_key(private_pem.encode(), password=None)
        public = serialization.load_pem_public_key(public_pem.encode())
        if not isinstance(private, rsa.RSAPrivateKey) or not isinstance(public, rsa.RSAPublicKey):
            raise ValueError("the tunnel proxy's keys must be RSA keys")
        if private.public_key().public_numbers() != public.public_numbers():
            raise ValueError("the public key is not the private key's")
        #: PEM text of the key pair (to share it with another proxy, or a test).
        self.private_pem, self.public_pem = private_pem, public_pem
        self._private = private
        self._public = public
        self.ttl = ttl
        self.leeway = leeway

    def sign(self, kite_id: str, seq: int) -> str:
        """The token of tunnel ``seq`` to the kite ``kite_id``."""
        now = int(time.time())
        claims = {"sub": kite_id, "seq": seq, "iat": now, "nbf": int(now - self.leeway),
                  "exp": int(now + self.ttl + self.leeway)}
        return jwt.encode(claims, self._private, algorithm=ALGORITHM)

    def verify(self, token: str) -> tuple[str, int]:
        """``(kite id, seq)`` of a token this proxy signed; :class:`~kite.errors.AuthenticationError`
        for anything else (another key or algorithm, expired, not yet valid, malformed)."""
        if not token or len(token) > MAX_JWT_LENGTH:
            raise AuthenticationError("tunnel token missing or too long")
        try:
            claims = jwt.decode(token, self._public, algorithms=[ALGORITHM], leeway=self.leeway,
                                options={"require": ["sub", "seq", "exp"], "verify_iat": False})
        except jwt.PyJWTError as exc:
            raise AuthenticationError(f"invalid tunnel token: {exc}") from None
        sub, seq = claims.get("sub"), claims.get("seq")
        if not isinstance(sub, str) or not sub or isinstance(seq, bool) or not isinstance(seq, int):
            raise AuthenticationError("invalid tunnel token: sub must be a kite id and seq a number")
        return sub, seq
