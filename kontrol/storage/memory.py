"""In-memory storage: for tests and for a single Kontrol that may forget everything on restart.

Plain dicts; no locking is needed because no method yields to another greenlet
while it reads or writes them. Expiry uses the monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass

from kite.wire.protocol import PATH_FIELDS, KiteIdentity

from .base import (
    KeyPair,
    KiteRecord,
    KiteRef,
    check_kite,
    check_ttl,
    check_usable,
    kite_id,
    new_key_pair,
    newest_first,
    soft_deleted,
)
from .errors import KeyPairExistsError, KeyPairNotFoundError
from .local import DEFAULT_PURGE_INTERVAL, LocalStorage, change_events


@dataclass
class _Entry:
    record: KiteRecord
    expires_at: float | None  # time.monotonic() deadline

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


def _deadline(ttl: float | None) -> float | None:
    return None if ttl is None else time.monotonic() + ttl


def _copy(kite: KiteIdentity) -> KiteIdentity:
    # KiteIdentity is mutable: keep our own copy so callers cannot change stored data.
    return KiteIdentity(**kite.to_wire())


class MemoryStorage(LocalStorage):
    """Kites, watches and key pairs in this process's memory."""

    def __init__(self, purge_interval: float = DEFAULT_PURGE_INTERVAL) -> None:
        self._kites: dict[str, _Entry] = {}
        self._key_pairs: dict[str, KeyPair] = {}
        super().__init__(purge_interval)

    # -- kites --------------------------------------------------------------------------

    def _take_expired(self, kid: str) -> None:
        """Drop an expired entry for ``kid`` now (announcing it), so it reads as absent."""
        entry = self._kites.get(kid)
        if entry is not None and not entry.live(time.monotonic()):
            del self._kites[kid]
            self._publish(change_events(entry.record, None))

    def upsert(self, kite: KiteIdentity, url: str, key_id: str = "", ttl: float | None = None) -> None:
        check_kite(kite, url)
        ttl = check_ttl(ttl)
        self._take_expired(kite.id)
        old = self._kites.get(kite.id)
        record = KiteRecord(_copy(kite), url, key_id)
        self._kites[kite.id] = _Entry(record, _deadline(ttl))
        self._publish(change_events(old.record if old else None, record))

    def refresh(self, kite: KiteRef, ttl: float | None) -> bool:
        ttl = check_ttl(ttl)
        kid = kite_id(kite)
        self._take_expired(kid)
        entry = self._kites.get(kid)
        if entry is None:
            return False
        entry.expires_at = _deadline(ttl)
        return True

    def delete(self, kite: KiteRef) -> bool:
        kid = kite_id(kite)
        self._take_expired(kid)
        entry = self._kites.pop(kid, None)
        if entry is None:
            return False
        self._publish(change_events(entry.record, None))
        return True

    def _scan(self, prefix: tuple[str, ...]) -> Iterable[KiteRecord]:
        now = time.monotonic()
        fields = PATH_FIELDS[: len(prefix)]
        return [
            e.record
            for e in self._kites.values()
            if e.live(now) and tuple(getattr(e.record.kite, f) for f in fields) == prefix
        ]

    def get_by_id(self, kite_id: str) -> KiteRecord | None:
        entry = self._kites.get(kite_id)
        return entry.record if entry is not None and entry.live(time.monotonic()) else None

    def count(self) -> int:
        now = time.monotonic()
        return sum(1 for e in self._kites.values() if e.live(now))

    def _purge_expired(self) -> list[KiteRecord]:
        now = time.monotonic()
        expired = [kid for kid, e in self._kites.items() if not e.live(now)]
        return [self._kites.pop(kid).record for kid in expired]

    # -- key pairs ----------------------------------------------------------------------

    def add_key_pair(self, id: str, public: str, private: str) -> KeyPair:
        pair = new_key_pair(id, public, private)
        if pair.id in self._key_pairs:
            raise KeyPairExistsError(f"key pair {pair.id} already exists")
        if any(p.public == pair.public for p in self._key_pairs.values()):
            raise KeyPairExistsError("a key pair with this public key already exists")
        self._key_pairs[pair.id] = pair
        return pair

    def _find(self, id: str) -> KeyPair:
        pair = self._key_pairs.get(id)
        if pair is None:
            raise KeyPairNotFoundError()
        return pair

    def get_key_pair(self, id: str) -> KeyPair:
        return check_usable(self._find(id))

    def get_key_pair_by_public(self, public: str) -> KeyPair:
        public = public.strip()
        for pair in self._key_pairs.values():
            if pair.public == public:
                return check_usable(pair)
        raise KeyPairNotFoundError()

    def delete_key_pair(self, id: str) -> None:
        self._key_pairs[id] = soft_deleted(self._find(id))

    def list_key_pairs(self, include_deleted: bool = False) -> list[KeyPair]:
        return newest_first(self._key_pairs.values(), include_deleted)

    def _close(self) -> None:
        self._kites.clear()
