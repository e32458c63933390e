"""The storage interface of Kontrol and the logic every backend shares.

A backend keeps three things:

* **kites**: a kite identity (seven fields, PROTOCOL.md §4.1) with the URL it
  serves on and the id of the key pair it registered under (``key_id``, §7.12),
  optionally with a TTL after which it disappears unless refreshed (§7.8);
* **watches**: callbacks told ``REGISTER``/``DEREGISTER`` when kites matching a
  query appear, change or disappear, including by expiry (§7.9);
* **key pairs**: the RSA pairs Kontrol signs with, soft-deleted (§7.12).

All methods block the calling greenlet (gevent) and are safe to call from many
greenlets at once. Errors are :mod:`kontrol.storage.errors`.
"""

from __future__ import annotations

import logging
import math
import random
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from kite.wire.protocol import KiteIdentity

from .errors import InvalidKiteError, KeyPairDeletedError, KeyPairError
from .query import KontrolQuery

log = logging.getLogger(__name__)

REGISTER = "REGISTER"
DEREGISTER = "DEREGISTER"

#: What callers may pass where one kite is meant: its identity or just its id.
KiteRef = KiteIdentity | str
#: What callers may pass where a query is meant (see :meth:`KontrolQuery.coerce`).
QueryLike = KontrolQuery | KiteIdentity | dict[str, Any]


@dataclass(frozen=True)
class KiteRecord:
    """One registered kite: its identity, the URL it serves on and its key pair id."""

    kite: KiteIdentity
    url: str
    key_id: str = ""


@dataclass(frozen=True)
class KiteEvent:
    """A change seen by a watch (PROTOCOL.md §7.9 ``KiteEvent``).

    ``revision`` orders events on etcd (the etcd revision/index); 0 elsewhere.
    """

    action: str
    kite: KiteIdentity
    url: str = ""
    key_id: str = ""
    revision: int = 0

    def to_wire(self, token: str = "") -> dict[str, Any]:
        """The wire ``KiteEvent``: ``{"action", "kite", "url"?, "token"?}``."""
        wire: dict[str, Any] = {"action": self.action, "kite": self.kite.to_wire()}
        if self.url:
            wire["url"] = self.url
        if token:
            wire["token"] = token
        return wire


WatchCallback = Callable[[KiteEvent], Any]


@dataclass(frozen=True)
class KeyPair:
    """An RSA key pair Kontrol signs with (PEM strings), soft-deletable.

    ``created_at`` and ``deleted_at`` are Unix timestamps (seconds).
    """

    id: str
    public: str
    private: str
    created_at: float = 0.0
    deleted_at: float | None = None

    @property
    def deleted(self) -> bool:
        """Whether the pair was soft-deleted."""
        return self.deleted_at is not None

    def to_json(self) -> dict[str, Any]:
        """The stored form (used by the etcd backends)."""
        return {
            "id": self.id,
            "public": self.public,
            "private": self.private,
            "created_at": self.created_at,
            "deleted_at": self.deleted_at,
        }

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> KeyPair:
        """Inverse of :meth:`to_json`."""
        return cls(obj["id"], obj["public"], obj["private"], float(obj["created_at"]), obj.get("deleted_at"))


def new_key_pair(id: str, public: str, private: str) -> KeyPair:
    """A fresh :class:`KeyPair`: a UUID v4 when ``id`` is empty, PEMs trimmed (Go ``AddKeyPair``)."""
    public, private = public.strip(), private.strip()
    if not public or not private:
        raise KeyPairError("public and private keys must not be empty")
    if "/" in id:
        raise KeyPairError("key pair id must not contain '/'")
    return KeyPair(id or str(uuid.uuid4()), public, private, time.time(), None)


def soft_deleted(pair: KeyPair) -> KeyPair:
    """``pair`` marked deleted now (an already deleted pair keeps its first deletion time)."""
    return pair if pair.deleted else replace(pair, deleted_at=max(time.time(), pair.created_at))


def check_usable(pair: KeyPair) -> KeyPair:
    """Return ``pair``, or raise :class:`KeyPairDeletedError` if it was soft-deleted."""
    if pair.deleted:
        raise KeyPairDeletedError(pair)
    return pair


def newest_first(pairs: Iterable[KeyPair], include_deleted: bool) -> list[KeyPair]:
    """The listing order of :meth:`Storage.list_key_pairs`."""
    chosen = [p for p in pairs if include_deleted or not p.deleted]
    chosen.sort(key=lambda p: (p.created_at, p.id), reverse=True)
    return chosen


def check_kite(kite: KiteIdentity, url: str) -> None:
    """Validate a registration: all seven fields set, none with ``/`` (§4.3), a URL."""
    if not isinstance(kite, KiteIdentity):
        raise TypeError(f"expected a KiteIdentity, not {type(kite).__name__}")
    try:
        kite.validate()
    except ValueError as e:
        raise InvalidKiteError(str(e)) from None
    if not url:
        raise InvalidKiteError("empty url")


def check_ttl(ttl: float | None) -> float | None:
    """``ttl`` in seconds (None: never expires); it must be a positive finite number."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float) or not math.isfinite(ttl) or ttl <= 0:
        raise ValueError(f"ttl must be None or a positive number of seconds, not {ttl!r}")
    return float(ttl)


def whole_seconds(ttl: float) -> int:
    """A TTL for etcd, which counts whole seconds: rounded up so a kite never expires early."""
    return max(1, math.ceil(ttl))


def kite_id(ref: KiteRef) -> str:
    """The id of a :data:`KiteRef`."""
    value = ref.id if isinstance(ref, KiteIdentity) else ref
    if not isinstance(value, str) or not value or "/" in value:
        raise InvalidKiteError(f"invalid kite id {value!r}")
    return value


def shuffled(records: Iterable[KiteRecord]) -> list[KiteRecord]:
    """Results come back in random order, as in Go (load spreading for callers)."""
    out = list(records)
    random.shuffle(out)
    return out


class Watcher(ABC):
    """A running watch; :meth:`cancel` stops it (idempotent)."""

    @abstractmethod
    def cancel(self) -> None:
        """Stop delivering events. No callback starts after this returns."""

    @property
    @abstractmethod
    def active(self) -> bool:
        """False once cancelled (or once its storage was closed)."""

    def __enter__(self) -> Watcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.cancel()


class Storage(ABC):
    """What Kontrol needs from a registry store. See the module docstring for the model.

    Query semantics are the same on every backend (:mod:`kontrol.storage.query`):
    :meth:`get` validates, scans the candidates of :meth:`_scan` and filters them.
    """

    # -- kites --------------------------------------------------------------------------

    @abstractmethod
    def upsert(self, kite: KiteIdentity, url: str, key_id: str = "", ttl: float | None = None) -> None:
        """Insert or replace the kite with this id (its identity may change), resetting its TTL.

        ``ttl`` None: the entry never expires (kites registered over a websocket,
        deleted on disconnect); a number: it expires ``ttl`` seconds from now unless
        refreshed. Watchers get ``REGISTER`` when the kite is new or its URL, key id or
        identity changed (an identity change also gives ``DEREGISTER`` of the old one).
        Raises :class:`InvalidKiteError` for an invalid identity or an empty URL.
        """

    def upsert_many(self, records: Iterable[KiteRecord], ttl: float | None = None) -> None:
        """:meth:`upsert` each record with the same TTL (backends may batch this)."""
        for record in records:
            self.upsert(record.kite, record.url, record.key_id, ttl)

    @abstractmethod
    def refresh(self, kite: KiteRef, ttl: float | None) -> bool:
        """Restart the kite's TTL (None: make it permanent); False if it is not stored (or expired).

        A refresh is not an event for watchers.
        """

    @abstractmethod
    def delete(self, kite: KiteRef) -> bool:
        """Remove the kite with this id; True if it was stored. Watchers get ``DEREGISTER``."""

    def get(self, query: QueryLike) -> list[KiteRecord]:
        """The live kites matching ``query``, in random order; ``[]`` when none match.

        Raises :class:`InvalidQueryError` for a malformed query (§4.5).
        """
        q = KontrolQuery.coerce(query).validate()
        if q.is_id_only:
            record = self.get_by_id(q.id)
            return [record] if record is not None else []
        return shuffled(r for r in self._scan(q.scan_prefix()) if q.matches(r.kite))

    @abstractmethod
    def _scan(self, prefix: tuple[str, ...]) -> Iterable[KiteRecord]:
        """The live kites whose first ``len(prefix)`` path fields equal ``prefix`` (1 to 7 values)."""

    @abstractmethod
    def get_by_id(self, kite_id: str) -> KiteRecord | None:
        """The live kite with this id, or None."""

    @abstractmethod
    def count(self) -> int:
        """How many live kites are stored."""

    # -- watches ------------------------------------------------------------------------

    @abstractmethod
    def watch(self, query: QueryLike, callback: WatchCallback) -> Watcher:
        """Call ``callback(event)`` for every later change to a kite matching ``query``.

        Every change made after ``watch`` returns is delivered, in order, from a
        greenlet of the watcher's own (a slow callback delays only its own watcher).
        On etcd this includes changes by other processes sharing the etcd, and
        expiry; the watch survives short etcd outages.
        """

    # -- key pairs ----------------------------------------------------------------------

    @abstractmethod
    def add_key_pair(self, id: str, public: str, private: str) -> KeyPair:
        """Store a new key pair (id generated when empty, PEMs trimmed) and return it.

        Raises :class:`KeyPairExistsError` if the id or the public key is taken.
        """

    @abstractmethod
    def get_key_pair(self, id: str) -> KeyPair:
        """The pair with this id; :class:`KeyPairNotFoundError` / :class:`KeyPairDeletedError`."""

    @abstractmethod
    def get_key_pair_by_public(self, public: str) -> KeyPair:
        """The pair with this public PEM (trimmed); errors as :meth:`get_key_pair`."""

    @abstractmethod
    def delete_key_pair(self, id: str) -> None:
        """Soft-delete: later lookups raise :class:`KeyPairDeletedError`. Missing: ``KeyPairNotFoundError``."""

    @abstractmethod
    def list_key_pairs(self, include_deleted: bool = False) -> list[KeyPair]:
        """All (live, or also deleted) pairs, newest first."""

    # -- lifecycle ----------------------------------------------------------------------

    def ping(self) -> None:
        """Raise :class:`StorageUnavailableError` if the backend cannot be reached."""
        self.count()

    @abstractmethod
    def close(self) -> None:
        """Cancel watchers, stop background greenlets and release connections (idempotent)."""

    def __enter__(self) -> Storage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
