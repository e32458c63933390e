"""Kontrol's RSA key pairs: which one signs, which ones are trusted, rotation (PROTOCOL.md §7.12).

Pairs live in the storage backend, so every Kontrol sharing it signs and
verifies with the same keys. The *current* pair (the newest one not deleted)
signs new kite keys and the tokens of kites that registered under a deleted
pair. Rotation adds a new pair; the old one keeps verifying until it is
retired (soft-deleted) -- after that, kites registering with it get a re-signed
kite key, and tokens signed with it are refused with "token is expired", which
makes callers fetch new ones (§5.7).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

import gevent
import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from kite.auth import KeyNotTrustedError
from kite.errors import GenericError

from .storage import KeyPair, KeyPairDeletedError, KeyPairExistsError, KeyPairNotFoundError, Storage, StorageError

log = logging.getLogger("kontrol.keypairs")

#: What a caller is told when the key pairs cannot be read (the storage is down): not its details.
STORAGE_DOWN_MESSAGE = "internal error - kontrol cannot read its keys"

#: Bits of the RSA keys Kontrol generates (what ``openssl genrsa`` gives by default).
RSA_BITS = 2048
#: Seconds a key pair lookup (the current pair, a pair by id or public key, and
#: "deleted"/"not found" answers) is remembered before asking the storage again:
#: a rotation or retirement made by another Kontrol on the same storage is seen
#: within this time. Without it every getKites result cost an etcd round trip.
LOOKUP_TTL = 10.0
#: Lookups remembered at most (a peer can present any public key; real ones are few).
LOOKUP_CACHE_SIZE = 1024


def generate_pem_pair(bits: int = RSA_BITS) -> tuple[str, str]:
    """A fresh RSA key pair as ``(public PEM, private PEM)``."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    private = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return public, private


class KeyPairs:
    """The key pairs of one storage, with the parsed private keys cached (parsing costs ~35 ms)."""

    def __init__(self, storage: Storage):
        self.storage = storage
        self._private_keys: dict[str, Any] = {}
        self._current: KeyPair | None = None
        self._current_until = 0.0
        # (kind, key) -> (deadline, pair or the KeyPairError to raise)
        self._lookups: dict[tuple[str, str], tuple[float, Any]] = {}

    def add(self, public: str, private: str, id: str = "") -> KeyPair:
        """Store a pair (or return the stored one with the same public key)."""
        try:
            pair = self.storage.add_key_pair(id, public, private)
        except KeyPairExistsError:
            pair = self.by_public(public, allow_deleted=True)
        self._forget()
        return pair

    def _forget(self) -> None:
        """Drop what was remembered (after a change made here)."""
        self._current = None
        self._lookups.clear()

    def _lookup(self, kind: str, key: str, fetch: Any) -> KeyPair:
        now = time.monotonic()
        hit = self._lookups.get((kind, key))
        if hit is None or hit[0] <= now:
            try:
                value: Any = fetch(key)
            except (KeyPairDeletedError, KeyPairNotFoundError) as exc:
                value = exc
            if len(self._lookups) > LOOKUP_CACHE_SIZE:
                self._lookups.clear()
            hit = self._lookups[(kind, key)] = (now + LOOKUP_TTL, value)
        if isinstance(hit[1], Exception):
            raise hit[1]
        return hit[1]

    def generate(self) -> KeyPair:
        """Generate and store a new pair; it becomes the current one."""
        return self.add(*generate_pem_pair())

    def rotate(self, grace: float | None = None) -> KeyPair:
        """Start a rotation: a new current pair; the others keep verifying until retired.

        With ``grace`` (seconds) the pairs that were current before are retired
        after that long, in the background; without it call :meth:`retire` yourself.
        """
        old = [p.id for p in self.storage.list_key_pairs()]
        pair = self.generate()
        log.info("key rotation: new key pair %s is current", pair.id)
        if grace is not None:
            gevent.spawn_later(grace, self._retire_all, old)
        return pair

    def _retire_all(self, pair_ids: list[str]) -> None:
        for pair_id in pair_ids:
            try:
                self.retire(pair_id)
            except Exception:
                log.exception("retiring key pair %s failed", pair_id)

    def retire(self, pair_id: str) -> None:
        """Soft-delete a pair: still trusted for kite keys (re-signed on register), no longer signing."""
        self.storage.delete_key_pair(pair_id)
        self._forget()
        log.info("key pair %s retired", pair_id)

    def current(self) -> KeyPair:
        """The newest pair that is not deleted; one is generated when there is none."""
        now = time.monotonic()
        if self._current is None or now >= self._current_until:
            pairs = self.storage.list_key_pairs()
            self._current = pairs[0] if pairs else self.generate()
            self._current_until = now + LOOKUP_TTL
        return self._current

    def by_public(self, public: str, allow_deleted: bool = False) -> KeyPair:
        """The pair with this public key; ``KeyPairDeletedError`` for a retired one unless allowed."""
        try:
            return self._lookup("public", public.strip(), self.storage.get_key_pair_by_public)
        except KeyPairDeletedError as exc:
            if allow_deleted and exc.key_pair is not None:
                return exc.key_pair
            raise

    def by_id(self, pair_id: str, allow_deleted: bool = False) -> KeyPair:
        """The pair with this id; ``KeyPairDeletedError`` for a retired one unless allowed."""
        try:
            return self._lookup("id", pair_id, self.storage.get_key_pair)
        except KeyPairDeletedError as exc:
            if allow_deleted and exc.key_pair is not None:
                return exc.key_pair
            raise

    def trust(self, public: str) -> None:
        """``Config.verify_func`` of the Kontrol kite: any stored pair is trusted, retired ones too."""
        try:
            self.by_public(public, allow_deleted=True)
        except KeyPairNotFoundError:
            raise KeyNotTrustedError() from None
        except StorageError as exc:  # not cached: the next call asks again; the caller never sees where etcd is
            log.error("checking a kite's Kontrol key: %s", exc)
            raise GenericError(STORAGE_DOWN_MESSAGE) from None

    def sign(self, claims: dict[str, Any], pair: KeyPair) -> str:
        """An RS256 JWT of ``claims`` signed with ``pair``."""
        key = self._private_keys.get(pair.id)
        if key is None:
            key = self._private_keys[pair.id] = serialization.load_pem_private_key(pair.private.encode(), None)
        return jwt.encode(claims, key, algorithm="RS256")

    def new_kite_key(self, username: str, issuer: str, kontrol_url: str, pair: KeyPair | None = None) -> str:
        """A kite key for ``username`` (§5.1): ``iss``, ``sub``, ``iat``, ``jti``, ``kontrolURL``, ``kontrolKey``."""
        pair = pair or self.current()
        claims = {
            "iss": issuer,
            "sub": username,
            "iat": int(time.time()),
            "jti": str(uuid.uuid4()),
            "kontrolURL": kontrol_url,
            "kontrolKey": pair.public,
        }
        return self.sign(claims, pair)

    def resign_kite_key(self, claims: dict[str, Any]) -> tuple[str, KeyPair]:
        """The same kite key claims signed by the current pair (for a kite whose pair was retired)."""
        pair = self.current()
        return self.sign({**claims, "kontrolKey": pair.public}, pair), pair
