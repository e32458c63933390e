"""Tokens Kontrol issues to callers for target kites (PROTOCOL.md §5.5, §7.3-7.4)."""

from __future__ import annotations

import time
import uuid
from collections import OrderedDict

from .keypairs import KeyPair, KeyPairs

#: Token lifetime (the Go Kontrol's ``TokenTTL``).
TOKEN_TTL = 48 * 3600.0
#: Clock skew allowance: ``nbf`` is backdated and ``exp`` extended by it (2016: 1 min).
TOKEN_LEEWAY = 60.0
#: Issued tokens remembered for reuse; one per (audience, caller, key pair) in use.
TOKEN_CACHE_SIZE = 10_000


class TokenIssuer:
    """Signs tokens and reuses them until ``ttl - leeway`` after issue, like the Go Kontrol."""

    def __init__(self, keypairs: KeyPairs, issuer: str, ttl: float = TOKEN_TTL, leeway: float = TOKEN_LEEWAY):
        self.keypairs = keypairs
        self.issuer = issuer
        self.ttl = ttl
        self.leeway = leeway
        self._cache: OrderedDict[tuple[str, str, str], tuple[str, float]] = OrderedDict()

    def token(self, audience: str, subject: str, pair: KeyPair, force: bool = False) -> str:
        """A token for ``subject`` (the caller) to call kites under ``audience``, signed by ``pair``."""
        key = (audience, subject, pair.id)
        now = time.time()
        if not force:
            cached = self._cache.get(key)
            if cached is not None and cached[1] > now:
                self._cache.move_to_end(key)
                return cached[0]
        issued = int(now)
        claims = {
            "iss": self.issuer,
            "sub": subject,
            "aud": audience,
            "iat": issued,
            "nbf": int(issued - self.leeway),
            "exp": int(issued + self.ttl + self.leeway),
            "jti": str(uuid.uuid4()),
        }
        token = self.keypairs.sign(claims, pair)
        self._cache[key] = (token, now + self.ttl - self.leeway)
        self._cache.move_to_end(key)
        while len(self._cache) > TOKEN_CACHE_SIZE:
            self._cache.popitem(last=False)
        return token
