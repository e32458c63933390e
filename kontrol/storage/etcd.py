"""etcd v3 storage through etcd's HTTP/JSON gateway (etcd >= 3.4; :mod:`kontrol.storage.etcdhttp`).

Key layout under ``prefix`` (default ``/kontrol``), all readable with ``etcdctl``:

* ``<prefix>/kites/<username>/<environment>/<name>/<version>/<region>/<hostname>/<id>``
  -> ``{"url": ..., "key_id": ...}`` (the Go Kontrol's value);
* ``<prefix>/kite-ids/<id>`` -> ``{"kite": "/<path>", "url", "key_id", "ttl"}``, the id
  index (ID-only queries, refresh and delete by id, identity changes, ``count``);
* ``<prefix>/keys/<id>`` -> the key pair; ``<prefix>/key-publics/<sha256(public)>`` -> id.

TTLs: **one shared lease per TTL and storage instance** (:mod:`kontrol.storage.etcd_leases`),
attached to both keys of every kite the instance writes with that TTL and kept alive
while it runs; the instance deletes each kite itself when its TTL runs out without a
refresh. A registration is then one write (no lease grant: that consensus round cost
etcd more than the write). A refresh of a kite the replica shows unchanged since our
own write is no round trip at all (no write, no revision, no watch event; a delete by
another writer is seen within the watch lag, and the next refresh says the kite is
gone); any other refresh writes the kite onto our lease. A crashed instance's kites go
with its lease, at most a TTL after the crash -- the live ones have moved by then to the
lease of the instance they heartbeat through. The id index says whether a kite's lease
is shared (``"shared": true``); a kite's lease of its own (an earlier version's write) is
revoked once the kite is on a shared one. etcd raises TTLs below its minimum
(``ceil(1.5 * election timeout)``, 2 s by default) to that minimum.

Atomicity: every change of a kite is one transaction guarded by the id index's
``mod_revision`` (optimistic concurrency, retried on conflict); no etcd locks.

Reads: an in-memory replica of the kites (:mod:`kontrol.storage.replica`), listed at one
revision and kept current by one watch stream over ``<prefix>/kites/``, answers
``getKites``/``getToken`` without a round trip to etcd while it is in sync (``replica=False``:
every read goes to etcd). The same stream feeds the watchers, resumed from the last seen
revision after errors, so they see changes by every process sharing the etcd and survive
outages.
"""

from __future__ import annotations

import http.client
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import gevent

from kite.wire.protocol import PATH_FIELDS, KiteIdentity

from . import etcd3_wire as wire
from . import etcd_common as common
from .base import (
    KeyPair,
    KiteEvent,
    KiteRecord,
    KiteRef,
    check_kite,
    check_ttl,
    check_usable,
    kite_id,
    new_key_pair,
    newest_first,
    soft_deleted,
    whole_seconds,
)
from .errors import KeyPairExistsError, KeyPairNotFoundError, StorageError, StorageUnavailableError
from .etcd_leases import Member, SharedLeases
from .etcdhttp import API_PATH, EtcdHttp, EtcdHttpError, tls_context
from .txnbatch import TxnBatcher

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "/kontrol"
#: Optimistic transactions retried this often under contention on one kite before
#: giving up (contention means several Kontrols rewriting the same kite at once).
TXN_ATTEMPTS = 20
#: Times a writer whose own guard held rejoins a combined transaction that another writer's guard failed.
REJOINS = 3
#: Keys fetched per range request, so a huge registry is read in bounded responses.
RANGE_PAGE_SIZE = 1000
#: HTTP statuses of the gateway for gRPC Unavailable / DeadlineExceeded: the member has no leader
#: (lost quorum), is shutting down, or timed out: a request to another member may succeed.
UNAVAILABLE_STATUSES = (502, 503, 504)


def _etcd_message(text: str) -> str:
    """The ``error``/``message`` of an etcd error body (the body itself when it is not one)."""
    try:
        body = json.loads(text)
    except ValueError:
        return text[:300]
    if isinstance(body, dict):
        return str(body.get("message") or body.get("error") or text[:300])
    return text[:300]


def _lease_not_found(error: StorageError) -> bool:
    """Whether etcd refused a write because its lease no longer exists."""
    return "lease not found" in str(error)


def _still(old: _Index | None, current: dict[str, Any] | None) -> bool:
    """Whether the id entry ``current`` (a kv, None: absent) is still the ``old`` a guard expected."""
    return current is None if old is None else current is not None and int(current["mod_revision"]) == old.mod_revision


def _revision_of(result: dict[str, Any]) -> int:
    """The revision an etcd response was made at (for a write: the write's)."""
    return int(result["header"]["revision"])


@dataclass(frozen=True)
class _Index:
    """A decoded ``kite-ids`` entry."""

    record: KiteRecord
    ttl: int | None
    lease: int
    mod_revision: int
    #: The lease is a shared one (of whichever instance wrote it last), not the kite's own.
    shared: bool = False


class EtcdStorage(common.EtcdStorageBase):
    """Kites, watches and key pairs in etcd (v3 API); see the module docstring for the layout.

    ``prefix`` namespaces all keys (several registries, or tests, can share one etcd);
    ``timeout`` bounds each request; ``pool_size`` bounds the connections to etcd
    (plus one per storage instance for the watch stream while anything watches);
    ``ca_cert`` and ``cert`` (a (cert, key) file pair) configure TLS with ``protocol="https"``;
    ``replica`` keeps the kites in memory for reads (see the module docstring);
    ``failover``: the ``(host, port)`` of the cluster's other members, which requests and the watch
    stream move on to when the member they use fails (:mod:`kontrol.storage.httppool`).
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2379,
        prefix: str = DEFAULT_PREFIX,
        *,
        protocol: str = "http",
        timeout: float = common.DEFAULT_TIMEOUT,
        pool_size: int = common.DEFAULT_POOL_SIZE,
        ca_cert: str | None = None,
        cert: tuple[str, str] | None = None,
        replica: bool = True,
        failover: Sequence[tuple[str, int]] = (),
    ) -> None:
        super().__init__(host, port, protocol, timeout, pool_size, failover)
        self._tls = {"verify": ca_cert or True, "cert": cert}
        context = tls_context(ca_cert, cert) if protocol == "https" else None
        self._http = EtcdHttp(host, port, protocol, timeout=timeout, pool_size=pool_size, ssl_context=context,
                              failover=failover, unavailable_statuses=UNAVAILABLE_STATUSES)
        #: The watch URL of each member, and the one the next watch stream opens on.
        self._watch_urls = [f"{protocol}://{h}:{p}{API_PATH}/watch" for h, p in self._http.endpoints]
        self._watch_member = 0
        #: Combines the transactions of concurrent upserts (:mod:`kontrol.storage.txnbatch`).
        self.batcher = TxnBatcher(self._post)
        #: The leases of the kites this instance writes, one per TTL (:mod:`kontrol.storage.etcd_leases`).
        self.leases = SharedLeases(self._grant, self._keep_alive, self._expire)
        root = prefix.rstrip("/")
        self._kites = f"{root}/kites/"
        self._ids = f"{root}/kite-ids/"
        self._keys = f"{root}/keys/"
        self._publics = f"{root}/key-publics/"
        if replica:
            self._start_replica()

    # -- transport ----------------------------------------------------------------------

    def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """One etcd request, its failures mapped to storage errors."""
        try:
            return self._http.post(path, payload)
        except EtcdHttpError as e:
            if e.status in (502, 503, 504):  # gRPC Unavailable / DeadlineExceeded: no leader, member down
                raise StorageUnavailableError(f"etcd at {self._where}: {e}") from e
            raise StorageError(f"etcd: {_etcd_message(e.text)}") from e
        except TimeoutError as e:
            raise StorageUnavailableError(f"etcd at {self._where} timed out: {e}") from e
        except (OSError, http.client.HTTPException) as e:
            raise StorageUnavailableError(f"etcd at {self._where} unavailable: {e}") from e

    def _range(self, key: str, prefix: bool = False, **options: Any) -> dict[str, Any]:
        payload: dict[str, Any] = {"key": wire.b64(key), **options}
        if prefix:
            payload["range_end"] = wire.range_end(key)
        return self._post("/kv/range", payload)

    def _get_kv(self, key: str) -> dict[str, Any] | None:
        kvs = self._range(key).get("kvs") or []
        return kvs[0] if kvs else None

    def _txn(self, compare: list[dict], success: list[dict], failure: list[dict] | None = None) -> dict[str, Any]:
        return self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure or []})

    def _grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds, rounded up (etcd may raise it to its minimum TTL)."""
        wanted = whole_seconds(ttl)
        result = self._post("/lease/grant", {"TTL": wanted, "ID": 0})
        granted = int(result.get("TTL", wanted))
        if granted != wanted:
            log.debug("etcd granted a %d s lease for a %d s TTL (its minimum TTL)", granted, wanted)
        return int(result["ID"])

    def _revoke_quietly(self, lease: int) -> None:
        if not lease:
            return
        try:
            self._post("/kv/lease/revoke", {"ID": lease})
        except StorageError as e:  # already expired or revoked: the keys are gone either way
            log.debug("revoking lease %x: %s", lease, e)

    def _keep_alive(self, lease: int) -> bool:
        """Restart ``lease``'s TTL; False if it already expired."""
        result = self._post("/lease/keepalive", {"ID": lease}).get("result") or {}
        return int(result.get("TTL", -1)) > 0

    def _revision(self) -> int:
        """The current store revision."""
        return int(self._range(self._ids, count_only=True)["header"]["revision"])

    # -- kites --------------------------------------------------------------------------

    def _path_key(self, kite: KiteIdentity) -> str:
        return self._kites + "/".join(getattr(kite, f) for f in PATH_FIELDS)

    def _decode_index(self, kv: dict[str, Any] | None) -> _Index | None:
        if kv is None:
            return None
        obj = json.loads(wire.unb64(kv.get("value", "")) or "{}")
        kite = KiteIdentity.from_string(obj["kite"])
        record = KiteRecord(kite, obj.get("url", ""), obj.get("key_id", ""))
        return _Index(record, obj.get("ttl"), int(kv.get("lease", 0)), int(kv["mod_revision"]),
                      bool(obj.get("shared")))

    @staticmethod
    def _index_value(record: KiteRecord, ttl: int | None, shared: bool) -> str:
        """The id index entry: the kite's path (identity), registration, requested TTL, whether the lease is shared."""
        value = {"kite": str(record.kite), "url": record.url, "key_id": record.key_id, "ttl": ttl}
        if shared:
            value["shared"] = True
        return json.dumps(value)

    def _index(self, kid: str) -> _Index | None:
        return self._decode_index(self._get_kv(self._ids + kid))

    def _write(self, record: KiteRecord, lease: int, ttl: int | None) -> tuple[_Index | None, int]:
        """Point the kite's keys at ``record`` with ``lease`` (a shared one, or 0), atomically; return what
        it replaced and the revision of the write."""
        id_key = self._ids + record.kite.id
        path_key = self._path_key(record.kite)
        index = self._index_value(record, ttl, shared=bool(lease))
        value = common.kite_value(record.url, record.key_id)
        old = self._believed(record.kite.id, ttl)
        failure = [{"request_range": {"key": wire.b64(id_key)}}]
        for attempt in common.retries(TXN_ATTEMPTS):
            ops = [wire.put(path_key, value, lease), wire.put(id_key, index, lease)]
            if old is not None and self._path_key(old.record.kite) != path_key:
                ops.insert(0, wire.delete(self._path_key(old.record.kite)))
            guard = wire.unchanged(id_key, old.mod_revision) if old else wire.absent(id_key)
            # The first try (a new kite, the usual case) joins the writes in flight; a retry goes alone.
            # A combined transaction fails whole when any writer's guard fails: a writer whose own guard
            # held joins the next one again (up to REJOINS times) instead of counting a lost race.
            batched = attempt == 0
            for _ in range(REJOINS + 1 if batched else 1):
                result = self.batcher.txn([guard], ops, failure) if batched else self._txn([guard], ops, failure)
                if result.get("succeeded"):
                    return old, _revision_of(result)
                kvs = result["responses"][0]["response_range"].get("kvs") or []
                current = kvs[0] if kvs else None
                if not batched or not _still(old, current):
                    break
            old = self._decode_index(current)
        raise common.contended(f"kite {record.kite.id}")

    def _believed(self, kid: str, ttl: int | None) -> _Index | None:
        """The kite's id entry as this instance believes it is -- its own last write of it, or what the
        replica last saw -- to guard the first try with, so that re-registering a stored kite joins the
        combined transactions like a new one instead of failing one (and with it every writer in it). A
        wrong belief costs a retry. The lease of a replica's entry is unknown: it is taken as shared (not
        revoked), so an earlier version's lease of its own is left to expire, empty, at its TTL."""
        member = self.leases.member(kid, ttl) if ttl is not None else None
        if member is not None:
            return _Index(member.record, ttl, 0, member.revision, shared=True)
        if self.replica is not None:
            record, revision = self.replica.get_by_id(kid), self.replica.revision_of(kid)
            if record is not None and revision is not None:
                return _Index(record, None, 0, revision, shared=True)
        return None

    def upsert(self, kite: KiteIdentity, url: str, key_id: str = "", ttl: float | None = None) -> None:
        check_kite(kite, url)
        ttl = check_ttl(ttl)
        record = KiteRecord(KiteIdentity(**kite.to_wire()), url, key_id)
        wanted = whole_seconds(ttl) if ttl is not None else None
        for attempt in (1, 2):
            lease = self.leases.lease_for(wanted) if wanted is not None else None
            try:
                old, revision = self._write(record, lease.id if lease else 0, wanted)
                break
            except StorageError as e:
                if lease is None or attempt == 2 or not _lease_not_found(e):
                    raise
                self.leases.lost(lease)  # expired or revoked behind our back: a new one, once
        if self.replica is not None:
            self.replica.wrote(record, revision)  # read your own writes, before the feed brings it
        if lease is not None:
            self.leases.joined(lease, record, revision)
        else:
            self.leases.leave(record.kite.id)
        if old is not None and not old.shared:
            self._revoke_quietly(old.lease)  # its own lease (an earlier version's write)

    def refresh(self, kite: KiteRef, ttl: float | None) -> bool:
        ttl = check_ttl(ttl)
        kid = kite_id(kite)
        wanted = whole_seconds(ttl) if ttl is not None else None
        member = self.leases.member(kid, wanted) if wanted is not None else None
        replica = self._in_sync()
        if member is not None and replica is not None and replica.revision_of(kid) == member.revision:
            self.leases.refreshed(member, wanted)  # on our lease, unchanged since our write: nothing to send
            return True
        self.leases.leave(kid)
        for _ in common.retries(TXN_ATTEMPTS):
            entry = self._index(kid)
            if entry is None:
                return False
            # A lease outlives keys deleted behind our back (etcdctl del, another tool): keeping it
            # alive would keep nothing findable. With the kite's key gone, both keys are written again.
            intact = self._path_stored(entry.record)
            if intact and wanted is None and not entry.lease:
                return True
            lease = self.leases.lease_for(wanted) if wanted is not None else None
            if intact and lease is not None and entry.lease == lease.id:
                self.leases.joined(lease, entry.record, entry.mod_revision)
                return True
            # Another instance's shared lease (this kite heartbeats here now), its own lease, another TTL:
            # onto our lease.
            revision = self._rewrite(entry, lease.id if lease else 0, wanted)
            if revision is not None:
                if lease is not None:
                    self.leases.joined(lease, entry.record, revision)
                if not entry.shared:
                    self._revoke_quietly(entry.lease)
                return True
        raise common.contended(f"kite {kid}")

    def _path_stored(self, record: KiteRecord) -> bool:
        """Whether the kite's path key (what queries find) is in etcd: the replica's word while it is
        in sync, else etcd's."""
        replica = self._in_sync()
        if replica is not None:
            found = replica.get_by_id(record.kite.id)
            return found is not None and found.kite == record.kite
        return self._get_kv(self._path_key(record.kite)) is not None

    def _rewrite(self, entry: _Index, lease: int, ttl: int | None) -> int | None:
        """Move both keys of an unchanged entry to ``lease`` (shared, or 0); the revision of the write, or
        None if the entry changed meanwhile."""
        r = entry.record
        ops = [wire.put(self._path_key(r.kite), common.kite_value(r.url, r.key_id), lease)]
        ops.append(wire.put(self._ids + r.kite.id, self._index_value(r, ttl, shared=bool(lease)), lease))
        result = self.batcher.txn([wire.unchanged(self._ids + r.kite.id, entry.mod_revision)], ops, [])
        if not result.get("succeeded"):
            return None
        revision = _revision_of(result)
        if self.replica is not None:
            self.replica.wrote(r, revision)  # the key may have been missing: findable at once
        return revision

    def _expire(self, member: Member) -> None:
        """Delete a kite of ours whose TTL ran out, unless it changed since our write (another instance's)."""
        kite = member.record.kite
        ops = [wire.delete(self._path_key(kite)), wire.delete(self._ids + kite.id)]
        result = self.batcher.txn([wire.unchanged(self._ids + kite.id, member.revision)], ops, [])
        if result.get("succeeded") and self.replica is not None:
            self.replica.deleted(kite, _revision_of(result))

    def delete(self, kite: KiteRef) -> bool:
        kid = kite_id(kite)
        for _ in common.retries(TXN_ATTEMPTS):
            entry = self._index(kid)
            if entry is None:
                return False
            ops = [wire.delete(self._path_key(entry.record.kite)), wire.delete(self._ids + kid)]
            result = self._txn([wire.unchanged(self._ids + kid, entry.mod_revision)], ops)
            if result.get("succeeded"):
                self.leases.leave(kid)
                if self.replica is not None:
                    self.replica.deleted(entry.record.kite, _revision_of(result))
                if not entry.shared:
                    self._revoke_quietly(entry.lease)
                return True
        raise common.contended(f"kite {kid}")

    def _scan_store(self, prefix: tuple[str, ...]) -> Iterable[KiteRecord]:
        key = self._kites + "/".join(prefix)
        if len(prefix) < len(PATH_FIELDS):
            key += "/"
        if len(prefix) == len(PATH_FIELDS):
            kv = self._get_kv(key)
            return [self._decode_kite(kv)] if kv else []
        return [self._decode_kite(kv) for kv in self._range_all(key)[1]]

    def _list_kites(self) -> tuple[int, list[tuple[KiteRecord, int]]]:
        revision, kvs = self._range_all(self._kites)
        return revision, [(self._decode_kite(kv), int(kv["mod_revision"])) for kv in kvs]

    def _range_all(self, key: str) -> tuple[int, list[dict[str, Any]]]:
        """The revision read at and every kv under the prefix ``key``, page by page at that revision."""
        end, start, revision = wire.range_end(key), key, 0
        found: list[dict[str, Any]] = []
        while True:
            options: dict[str, Any] = {"range_end": end, "limit": RANGE_PAGE_SIZE}
            if revision:
                options["revision"] = revision
            result = self._post("/kv/range", {"key": wire.b64(start), **options})
            revision = revision or int(result["header"]["revision"])
            kvs = result.get("kvs") or []
            found.extend(kvs)
            if not result.get("more") or not kvs:
                return revision, found
            start = wire.unb64(kvs[-1]["key"]) + "\0"

    def _decode_kite(self, kv: dict[str, Any]) -> KiteRecord:
        kite = common.kite_from_parts(wire.unb64(kv["key"])[len(self._kites) :].split("/"))
        if kite is None:
            raise StorageError(f"malformed kite key {wire.unb64(kv['key'])!r}")
        return KiteRecord(kite, *common.parse_kite_value(wire.unb64(kv.get("value", ""))))

    def _get_by_id_store(self, kite_id: str) -> KiteRecord | None:
        entry = self._index(kite_id)
        return entry.record if entry is not None else None

    def _count_store(self) -> int:
        return int(self._range(self._ids, prefix=True, count_only=True).get("count", 0))

    # -- watches ------------------------------------------------------------------------

    def _follow(self, start: int) -> Iterator[tuple[int, list[KiteEvent]]]:
        """The watch stream from revision ``start``, on one member; when it breaks or ends, the next
        stream opens on the next member (the one it was on may be down)."""
        url = self._watch_urls[self._watch_member % len(self._watch_urls)]
        try:
            yield from wire.follow_watch(
                common.bounded_session(1, **self._tls, keepalive=True),
                url,
                self._kites,
                start,
                (self._timeout, common.WATCH_READ_TIMEOUT),
            )
        finally:
            self._watch_member += 1

    # -- key pairs ----------------------------------------------------------------------

    def add_key_pair(self, id: str, public: str, private: str) -> KeyPair:
        pair = new_key_pair(id, public, private)
        key, public_key = self._keys + pair.id, self._publics + common.public_key_digest(pair.public)
        ops = [wire.put(key, json.dumps(pair.to_json()), 0), wire.put(public_key, pair.id, 0)]
        if not self._txn([wire.absent(key), wire.absent(public_key)], ops).get("succeeded"):
            raise KeyPairExistsError(f"key pair {pair.id} or its public key already exists")
        return pair

    def _find(self, id: str) -> tuple[KeyPair, int]:
        kv = self._get_kv(self._keys + id)
        if kv is None:
            raise KeyPairNotFoundError()
        return KeyPair.from_json(json.loads(wire.unb64(kv["value"]))), int(kv["mod_revision"])

    def get_key_pair(self, id: str) -> KeyPair:
        return check_usable(self._find(id)[0])

    def get_key_pair_by_public(self, public: str) -> KeyPair:
        kv = self._get_kv(self._publics + common.public_key_digest(public.strip()))
        if kv is None:
            raise KeyPairNotFoundError()
        return self.get_key_pair(wire.unb64(kv["value"]))

    def delete_key_pair(self, id: str) -> None:
        for _ in common.retries(TXN_ATTEMPTS):
            pair, mod_revision = self._find(id)
            if pair.deleted:
                return
            ops = [wire.put(self._keys + id, json.dumps(soft_deleted(pair).to_json()), 0)]
            if self._txn([wire.unchanged(self._keys + id, mod_revision)], ops).get("succeeded"):
                return
        raise common.contended(f"key pair {id}")

    def list_key_pairs(self, include_deleted: bool = False) -> list[KeyPair]:
        pairs = (KeyPair.from_json(json.loads(wire.unb64(kv["value"]))) for kv in self._range_all(self._keys)[1])
        return newest_first(pairs, include_deleted)

    # -- lifecycle ----------------------------------------------------------------------

    def _close_connections(self) -> None:
        self.leases.close()
        self._http.close()
        gevent.sleep(0)  # let killed greenlets unwind and close their connections
