"""Pieces both etcd backends use: connection limits, retries, the kite value, key pair indexing.

:class:`EtcdStorageBase` is their common base: the watch hub fed by the in-memory
replica's change feed (:mod:`kontrol.storage.replica`) or, without a replica, by an
event pump; reads from the replica while it is in sync; concurrent bulk upserts; closing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from abc import abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import gevent
import orjson
import requests
from gevent.pool import Pool
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection

from kite.wire.protocol import PATH_FIELDS, KiteIdentity

from .base import KiteEvent, KiteRecord, QueryLike, Storage, WatchCallback, Watcher, check_kite
from .errors import StorageError, StorageUnavailableError
from .query import KontrolQuery
from .replica import KEEPALIVE_OPTIONS, Replica
from .watch import EventPump, WatchHub

log = logging.getLogger(__name__)

#: Connections one storage instance may hold to etcd for ordinary requests. Requests
#: beyond this wait for a free connection instead of opening more: the Go Kontrol lost
#: kites when its database pool grew without bound under load. 10 in-flight requests
#: to one etcd is plenty for a registry whose writes are heartbeats.
DEFAULT_POOL_SIZE = 10
#: Seconds one etcd request may take before the backend reports it unavailable.
DEFAULT_TIMEOUT = 5.0
#: Read timeout of a watch connection. The v3 stream asks for progress notifications,
#: which etcd sends every 10 minutes by default; silence well beyond that means a dead
#: connection, so we reconnect.
WATCH_READ_TIMEOUT = 15 * 60.0
#: Upper bound of the random pause before retrying a transaction that lost a race, per
#: attempt so far. Random pauses spread out writers that keep colliding on one key.
CONTENTION_PAUSE = 0.01


def contention_pause(attempt: int) -> None:
    """Sleep a little (randomly, longer with each ``attempt``) before retrying a lost race."""
    if attempt:
        gevent.sleep(random.uniform(0, CONTENTION_PAUSE * attempt))


def retries(limit: int) -> Iterator[int]:
    """``range(limit)``, pausing (:func:`contention_pause`) before each retry of a lost race.

    Leave the loop on success; after it, ``raise`` :func:`contended`.
    """
    for attempt in range(limit):
        contention_pause(attempt)
        yield attempt


def contended(what: str) -> StorageError:
    """The error for a change to ``what`` that lost every attempt of its :func:`retries`."""
    return StorageError(f"{what}: too many concurrent updates")


class _KeepAliveAdapter(HTTPAdapter):
    """An adapter whose connections probe an idle peer (TCP keep-alive, :data:`KEEPALIVE_OPTIONS`)."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["socket_options"] = [*HTTPConnection.default_socket_options, *KEEPALIVE_OPTIONS]
        super().init_poolmanager(*args, **kwargs)


def bounded_session(pool_size: int, verify: Any = True, cert: Any = None, keepalive: bool = False) -> requests.Session:
    """A requests session that never holds more than ``pool_size`` connections (it blocks instead);
    ``keepalive``: its connections find a silently dead peer within seconds (for watch streams)."""
    session = requests.Session()
    adapter_class = _KeepAliveAdapter if keepalive else HTTPAdapter
    adapter = adapter_class(pool_connections=1, pool_maxsize=pool_size, pool_block=True)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.verify = verify
    session.cert = cert
    # etcd is addressed directly: skip requests' per-call scan of the proxy variables
    # (~10 % of Kontrol's CPU under registration load).
    session.trust_env = False
    return session


def kite_value(url: str, key_id: str) -> str:
    """The value stored under a kite's path key: the Go Kontrol's JSON (same keys, order, no spaces)."""
    return json.dumps({"url": url, "key_id": key_id}, separators=(",", ":"))


def parse_kite_value(value: str | bytes | None) -> tuple[str, str]:
    """``(url, key_id)`` from a stored value; empty strings when it is missing or garbled."""
    try:
        obj = orjson.loads(value) if value else {}  # once per kite in every scan: orjson, ~4x json's speed
    except ValueError:  # orjson.JSONDecodeError is one
        obj = {}
    if not isinstance(obj, dict):
        obj = {}
    url, key_id = obj.get("url", ""), obj.get("key_id", "")
    return (url if isinstance(url, str) else "", key_id if isinstance(key_id, str) else "")


def kite_from_parts(parts: list[str]) -> KiteIdentity | None:
    """A kite from the seven path segments of a key, or None when it is not a kite key."""
    if len(parts) != len(PATH_FIELDS) or not all(parts):
        return None
    return KiteIdentity(**dict(zip(PATH_FIELDS, parts, strict=True)))


def public_key_digest(public: str) -> str:
    """The key under which a public PEM is indexed (PEMs are too long and contain '/')."""
    return hashlib.sha256(public.encode()).hexdigest()


class EtcdStorageBase(Storage):
    """What both etcd backends share: one change feed per instance, reads from memory, bulk
    upserts, closing.

    With a replica (:meth:`_start_replica`, called by a subclass once it can reach etcd):
    the replica lists the kites, follows the change feed (:meth:`_follow`) for good, and
    publishes every change to the watchers; :meth:`_scan`, :meth:`get_by_id` and
    :meth:`count` read it while it is in sync, else etcd (``_scan_store`` & co.). Without
    one, an :class:`EventPump` follows the feed while there are watchers, from the revision
    current when the first one was added. Subclasses set ``_kites`` (the key prefix of the
    kites, named in the logs).
    """

    #: Names the backend in the watch pump's logs.
    _feed_name = "etcd"
    _kites: str

    def __init__(self, host: str, port: int, protocol: str, timeout: float, pool_size: int,
                 failover: Sequence[tuple[str, int]] = ()) -> None:
        members = [f"{host}:{port}", *(f"{h}:{p}" for h, p in failover if (h, p) != (host, port))]
        self._where = f"{protocol}://{','.join(members)}"
        self._timeout = timeout
        self._pool_size = pool_size
        self._hub = WatchHub(on_empty=self._stop_pump)
        self._pump: EventPump | None = None
        #: The in-memory replica of the kites, when the backend keeps one.
        self.replica: Replica | None = None
        self._closed = False

    # -- reads: the replica while in sync, else etcd ------------------------------------------

    def _start_replica(self) -> None:
        self.replica = Replica(f"{self._feed_name} replica {self._where}{self._kites}", self._list_kites,
                               self._follow, self._hub.publish)

    def _in_sync(self) -> Replica | None:
        replica = self.replica
        return replica if replica is not None and replica.ready.is_set() else None

    def _scan(self, prefix: tuple[str, ...]) -> Iterable[KiteRecord]:
        replica = self._in_sync()
        return replica.scan(prefix) if replica is not None else self._scan_store(prefix)

    def get_by_id(self, kite_id: str) -> KiteRecord | None:
        """From the replica; a miss asks etcd (the kite may be another writer's, newer than the watch lag:
        an HTTP heartbeat adopting it, an id-only ``getToken``), so "not there" is etcd's answer."""
        replica = self._in_sync()
        record = replica.get_by_id(kite_id) if replica is not None else None
        return record if record is not None else self._get_by_id_store(kite_id)

    def count(self) -> int:
        replica = self._in_sync()
        return len(replica) if replica is not None else self._count_store()

    def ping(self) -> None:
        """Reach etcd itself (the replica would answer without it)."""
        self._count_store()

    @abstractmethod
    def _scan_store(self, prefix: tuple[str, ...]) -> Iterable[KiteRecord]:
        """:meth:`_scan`, read from etcd."""

    @abstractmethod
    def _get_by_id_store(self, kite_id: str) -> KiteRecord | None:
        """:meth:`get_by_id`, read from etcd."""

    @abstractmethod
    def _count_store(self) -> int:
        """:meth:`count`, read from etcd."""

    def _list_kites(self) -> tuple[int, list[tuple[KiteRecord, int]]]:
        """Every kite with the revision it last changed at, and the revision of the listing (for the replica)."""
        raise NotImplementedError(f"{type(self).__name__} keeps no replica")

    def _check_registration(self, kite: KiteIdentity, url: str) -> None:
        """Validate a registration before writing it (:func:`check_kite`; backends may add limits)."""
        check_kite(kite, url)

    def upsert_many(self, records: Iterable[KiteRecord], ttl: float | None = None) -> None:
        """Upsert concurrently, at most ``pool_size`` at a time; raise the first failure."""
        records = list(records)
        for r in records:
            self._check_registration(r.kite, r.url)

        def one(r: KiteRecord) -> StorageError | None:
            try:
                self.upsert(r.kite, r.url, r.key_id, ttl)
            except StorageError as e:
                return e
            return None

        errors = [e for e in Pool(self._pool_size).imap_unordered(one, records) if e is not None]
        if errors:
            raise errors[0]

    # -- watches ------------------------------------------------------------------------

    @abstractmethod
    def _revision(self) -> int:
        """etcd's current revision (v3) or index (v2)."""

    @abstractmethod
    def _follow(self, start: int) -> Iterator[tuple[int, list[KiteEvent]]]:
        """The change feed of the kites from revision ``start`` (see :data:`kontrol.storage.watch.Follow`)."""

    def watch(self, query: QueryLike, callback: WatchCallback) -> Watcher:
        """Watch from now: with a replica, from its position (no round trip), once its first listing
        is in -- a watcher older than that listing would miss what the listing took in silently."""
        q = KontrolQuery.coerce(query).validate()
        if self.replica is not None:
            if not self.replica.listed.wait(self._timeout):
                raise StorageUnavailableError(f"etcd at {self._where}: the kites are not listed yet")
            revision, seen = self.replica.position()
        else:
            revision, seen = self._revision(), {}
        watcher = self._hub.add(q, callback, after_revision=revision, seen=seen)
        if self._pump is None and self.replica is None:  # the replica publishes every change itself
            name = f"{self._feed_name} watch {self._where}{self._kites}"
            self._pump = EventPump(name, self._follow, revision + 1, self._hub.publish)
        return watcher

    def _stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.stop()
            self._pump = None

    # -- lifecycle ----------------------------------------------------------------------

    @abstractmethod
    def _close_connections(self) -> None:
        """Release the backend's connections to etcd."""

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._hub.close()
        self._stop_pump()
        if self.replica is not None:
            self.replica.stop()
        self._close_connections()
