"""etcd v2 storage in the Go Kontrol's key layout (PROTOCOL.md §7.10), on :mod:`kontrol.storage.etcd2http`.

A Go Kontrol and this backend can share one etcd (<= 3.5, started with
``--enable-v2=true``). Under ``prefix`` (default empty, as in Go):

* ``/kites/<username>/<environment>/<name>/<version>/<region>/<hostname>/<id>`` ->
  ``{"url":...,"key_id":...}`` with the kite's TTL, exactly as Go writes it;
* ``/kites/<id>`` -> the same JSON plus ``"kite": "/<path>"`` (Go's JSON decoder
  ignores the extra field). Go never needed the path from the id, but we do: ID-only
  queries, delete/refresh by id and identity changes. For entries a Go Kontrol wrote
  (no ``"kite"``), we find the path by scanning ``/kites``;
* ``/kontrol/keys/<id>`` and ``/kontrol/key-publics/<sha256(public)>``: key pairs,
  outside Go's tree (Go keeps its key pairs elsewhere).

TTLs are etcd v2 TTLs (whole seconds); a refresh uses ``refresh=true``, which
watchers do not see. v2 has no multi-key transactions: a registration writes the
two kite keys pipelined on one connection (one round trip), unless this instance last wrote the kite with another
identity: then one after the other (id key first; its previous value names the old
path, deleted before the new one is written, so watchers see the change in order).

Watches long-poll ``/kites`` recursively (``wait=true&waitIndex=n``) in one greenlet
per storage instance, resuming at the next index after errors.

Transport: every request, the watch's long poll included, goes through
:class:`~kontrol.storage.etcd2http.Etcd2Http` (``http.client`` on a bounded keep-alive pool),
which raises python-etcd's exception classes: ``python-etcd`` itself is only imported for them.

v2 key limits the other backends do not have: a field may not be ``.`` or ``..``
(etcd cleans paths) nor start with ``_`` (etcd hides such keys from listings).
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import etcd

from kite.wire.protocol import PATH_FIELDS, KiteIdentity

from . import etcd_common as common
from .base import (
    DEREGISTER,
    REGISTER,
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
from .errors import (
    InvalidKiteError,
    KeyPairExistsError,
    KeyPairNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from .etcd2http import Etcd2Http, Etcd2Node
from .watch import FeedGap

log = logging.getLogger(__name__)

#: Seconds one watch long-poll waits for an event before it is re-issued.
WATCH_POLL_TIMEOUT = 60.0
#: Compare-and-swap retries under contention (several Kontrols on one key pair).
CAS_ATTEMPTS = 10
#: HTTP statuses of a member that cannot serve now (no leader, a raft timeout, shutting down): a
#: request to another member may succeed.
UNAVAILABLE_STATUSES = (500, 502, 503, 504)

_WRITE_ACTIONS = {"set", "create", "update", "compareAndSwap"}
_REMOVE_ACTIONS = {"delete", "expire", "compareAndDelete"}

#: Kites whose last written identity an instance remembers (see ``Etcd2Storage._written``).
MAX_REMEMBERED_KITES = 100_000

T = TypeVar("T")


def _segment(value: str) -> str:
    # Keys go into the URL as they are (but for characters invalid there); quote each path segment.
    return quote(value, safe="")


def _check_v2_key(kite: KiteIdentity) -> None:
    for f in PATH_FIELDS:
        value = getattr(kite, f)
        if value in (".", ".."):
            raise InvalidKiteError(f'Field "{f}" must not be "." or ".." on etcd v2')
        if value.startswith("_"):
            raise InvalidKiteError(f'Field "{f}" must not start with "_" on etcd v2 (hidden keys)')


class Etcd2Storage(common.EtcdStorageBase):
    """Kites, watches and key pairs in etcd's v2 keys API, shared with Go Kontrols.

    ``prefix`` namespaces the tree (empty: Go's ``/kites``); ``timeout`` bounds each
    request; ``pool_size`` bounds the connections to etcd (plus one for the watch
    long-poll while anything watches); ``failover``: the ``(host, port)`` of the cluster's other
    members, which requests and the watch move on to when the member they use fails.
    """

    _feed_name = "etcd2"

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 2379,
        prefix: str = "",
        *,
        protocol: str = "http",
        timeout: float = common.DEFAULT_TIMEOUT,
        pool_size: int = common.DEFAULT_POOL_SIZE,
        failover: Sequence[tuple[str, int]] = (),
    ) -> None:
        super().__init__(host, port, protocol, timeout, pool_size, failover)
        members = {"failover": failover, "unavailable_statuses": UNAVAILABLE_STATUSES}
        self._client = Etcd2Http(host, port, protocol, timeout=timeout, pool_size=pool_size, **members)
        self._watch_client = Etcd2Http(host, port, protocol, timeout=timeout, pool_size=1, **members)
        root = prefix.rstrip("/")
        self._kites = f"{root}/kites"
        self._keys = f"{root}/kontrol/keys"
        self._publics = f"{root}/kontrol/key-publics"
        #: Kite id -> the identity this instance last wrote for it (the newest
        #: :data:`MAX_REMEMBERED_KITES`): tells :meth:`upsert` when it may pipeline both keys.
        self._written: OrderedDict[str, KiteIdentity] = OrderedDict()

    # -- transport ----------------------------------------------------------------------

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Run one etcd request, mapping failures to storage errors.

        The outcomes callers handle (not found, already exists, compare failed) pass through.
        """
        try:
            return fn(*args, **kwargs)
        except (etcd.EtcdKeyNotFound, etcd.EtcdAlreadyExist, etcd.EtcdCompareFailed):
            raise
        except (etcd.EtcdConnectionFailed, etcd.EtcdLeaderElectionInProgress) as e:
            raise StorageUnavailableError(f"etcd at {self._where} unavailable: {e}") from e
        except etcd.EtcdException as e:
            status = (e.payload or {}).get("status", 0) if isinstance(e.payload, dict) else 0
            if status >= 500:
                raise StorageUnavailableError(f"etcd at {self._where}: {e}") from e
            raise StorageError(f"etcd: {e}") from e

    def _read(self, key: str, **options: Any) -> Etcd2Node | None:
        try:
            return self._call(self._client.read, key, **options)
        except etcd.EtcdKeyNotFound:
            return None

    def _delete(self, key: str) -> Etcd2Node | None:
        try:
            return self._call(self._client.delete, key)
        except etcd.EtcdKeyNotFound:
            return None

    # -- kites --------------------------------------------------------------------------

    def _path_key(self, kite: KiteIdentity) -> str:
        return self._kites + "/" + "/".join(_segment(getattr(kite, f)) for f in PATH_FIELDS)

    def _id_key(self, kid: str) -> str:
        return f"{self._kites}/{_segment(kid)}"

    def _kite_of_key(self, key: str) -> KiteIdentity | None:
        if not key.startswith(self._kites + "/"):
            return None
        return common.kite_from_parts(key[len(self._kites) + 1 :].split("/"))

    def _identity_of(self, kid: str, id_value: str | None, hint: KiteRef) -> KiteIdentity | None:
        """The identity of kite ``kid``: from its id entry, else the caller's identity, else a scan."""
        try:
            path = json.loads(id_value or "{}").get("kite")
        except (ValueError, AttributeError):
            path = None
        if isinstance(path, str) and path.startswith("/"):
            return KiteIdentity.from_string(path)
        if isinstance(hint, KiteIdentity):
            return hint
        log.debug("kite %s has no path in its id entry (written by a Go Kontrol?); scanning", kid)
        for record in self._scan(()):
            if record.kite.id == kid:
                return record.kite
        return None

    def _check_registration(self, kite: KiteIdentity, url: str) -> None:
        check_kite(kite, url)
        _check_v2_key(kite)

    def upsert(self, kite: KiteIdentity, url: str, key_id: str = "", ttl: float | None = None) -> None:
        """Write the id key and the path key. Both in one round trip (pipelined) for a kite this instance
        never wrote (nearly always a new one) or wrote with the same identity; after an identity change, one after the
        other: the id key's previous value names the old path, deleted before the new path is written,
        so watchers hear DEREGISTER old, then REGISTER new. If the pipelined writes find that another
        writer gave the id another identity, the old path goes and the new one is deleted and written
        again: the new identity's REGISTER comes last."""
        self._check_registration(kite, url)
        ttl = check_ttl(ttl)
        seconds = whole_seconds(ttl) if ttl is not None else None
        path_key, id_key = self._path_key(kite), self._id_key(kite.id)
        id_value = json.dumps({"url": url, "key_id": key_id, "kite": str(kite)}, separators=(",", ":"))
        value = common.kite_value(url, key_id)
        known = self._written.get(kite.id)
        pipelined = known is None or known == kite
        if pipelined:  # on one connection, applied in this order
            result, _ = self._call(self._client.write_all, [(id_key, id_value, seconds), (path_key, value, seconds)])
        else:
            result = self._call(self._client.write, id_key, id_value, ttl=seconds)
        prev = result.prev_node
        old = self._identity_of(kite.id, prev.value, kite) if prev is not None else None
        moved = old is not None and self._path_key(old) != path_key
        if moved:
            self._delete(self._path_key(old))
            if pipelined:  # the new path went too: delete it, then write it last (a same-value rewrite is no event)
                self._delete(path_key)
        if moved or not pipelined:
            self._call(self._client.write, path_key, value, ttl=seconds)
        self._remember(kite)

    def _remember(self, kite: KiteIdentity) -> None:
        self._written[kite.id] = kite
        self._written.move_to_end(kite.id)
        if len(self._written) > MAX_REMEMBERED_KITES:
            self._written.popitem(last=False)

    def refresh(self, kite: KiteRef, ttl: float | None) -> bool:
        ttl = check_ttl(ttl)
        kid = kite_id(kite)
        id_key = self._id_key(kid)
        try:
            if ttl is None:  # rewriting without a TTL is the only way to drop one
                current = self._call(self._client.read, id_key)
                self._call(self._client.write, id_key, current.value, prev_exist=True)
            else:
                current = self._call(self._client.refresh, id_key, whole_seconds(ttl))
            identity = self._identity_of(kid, current.value, kite)
            if identity is None:
                return False
            path_key = self._path_key(identity)
            if ttl is None:
                url, key_id = common.parse_kite_value(current.value)
                self._call(self._client.write, path_key, common.kite_value(url, key_id), prev_exist=True)
            else:
                self._call(self._client.refresh, path_key, whole_seconds(ttl))
        except etcd.EtcdKeyNotFound:
            return False
        return True

    def delete(self, kite: KiteRef) -> bool:
        kid = kite_id(kite)
        self._written.pop(kid, None)
        removed = self._delete(self._id_key(kid))
        if removed is None and not isinstance(kite, KiteIdentity):
            return False
        identity = self._identity_of(kid, removed.value if removed is not None else None, kite)
        removed_path = self._delete(self._path_key(identity)) if identity is not None else None
        return removed is not None or removed_path is not None

    def _scan_store(self, prefix: tuple[str, ...]) -> Iterable[KiteRecord]:
        key = "/".join([self._kites, *(_segment(p) for p in prefix)])
        result = self._read(key, recursive=True)
        if result is None:
            return []
        records = []
        for node in result.leaves:
            kite = None if node.dir else self._kite_of_key(node.key)
            if kite is not None and tuple(getattr(kite, f) for f in PATH_FIELDS[: len(prefix)]) == prefix:
                records.append(KiteRecord(kite, *common.parse_kite_value(node.value)))
        return records

    def _get_by_id_store(self, kite_id: str) -> KiteRecord | None:
        node = self._read(self._id_key(kite_id))
        if node is None or node.dir:
            return None
        kite = self._identity_of(kite_id, node.value, "")
        return KiteRecord(kite, *common.parse_kite_value(node.value)) if kite is not None else None

    def _count_store(self) -> int:
        result = self._read(self._kites)
        return 0 if result is None else sum(1 for node in result.leaves if not node.dir)

    # -- watches ------------------------------------------------------------------------

    def _revision(self) -> int:
        """etcd's current index (``X-Etcd-Index``)."""
        return self._call(self._client.read, "/").etcd_index

    def _follow(self, start: int) -> Iterator[tuple[int, list[KiteEvent]]]:
        """Long-poll ``/kites`` from index ``start``: ``(next index, events)`` per change."""
        index = start
        while True:
            try:
                result = self._watch_client.watch(self._kites, index=index, timeout=WATCH_POLL_TIMEOUT, recursive=True)
            except etcd.EtcdWatchTimedOut:
                continue
            except etcd.EtcdEventIndexCleared as e:
                current = (e.payload or {}).get("index") or self._revision()
                log.warning("etcd v2 history no longer has index %d (%d kept); events lost", index, current)
                raise FeedGap(int(current) + 1) from None
            index = result.modifiedIndex + 1
            event = self._decode_event(result)
            yield index, [event] if event is not None else []

    def _decode_event(self, result: Etcd2Node) -> KiteEvent | None:
        kite = None if result.dir else self._kite_of_key(result.key)
        if kite is None:
            return None
        prev = result.prev_node
        if result.action in _REMOVE_ACTIONS:
            url, key_id = common.parse_kite_value(prev.value if prev else None)
            return KiteEvent(DEREGISTER, kite, url, key_id, result.modifiedIndex)
        if result.action in _WRITE_ACTIONS:
            if prev is not None and prev.value == result.value:
                return None  # rewritten with the same value (a re-registration or TTL change)
            return KiteEvent(REGISTER, kite, *common.parse_kite_value(result.value), result.modifiedIndex)
        return None

    # -- key pairs ----------------------------------------------------------------------

    def add_key_pair(self, id: str, public: str, private: str) -> KeyPair:
        pair = new_key_pair(id, public, private)
        public_key = f"{self._publics}/{common.public_key_digest(pair.public)}"
        try:
            self._call(self._client.write, public_key, pair.id, prev_exist=False)
        except etcd.EtcdAlreadyExist:
            raise KeyPairExistsError("a key pair with this public key already exists") from None
        try:
            key = f"{self._keys}/{_segment(pair.id)}"
            self._call(self._client.write, key, json.dumps(pair.to_json()), prev_exist=False)
        except BaseException as e:
            self._delete(public_key)
            if isinstance(e, etcd.EtcdAlreadyExist):
                raise KeyPairExistsError(f"key pair {pair.id} already exists") from None
            raise
        return pair

    def _find(self, id: str) -> tuple[KeyPair, int]:
        node = self._read(f"{self._keys}/{_segment(id)}")
        if node is None or node.dir:
            raise KeyPairNotFoundError()
        return KeyPair.from_json(json.loads(node.value)), node.modifiedIndex

    def get_key_pair(self, id: str) -> KeyPair:
        return check_usable(self._find(id)[0])

    def get_key_pair_by_public(self, public: str) -> KeyPair:
        node = self._read(f"{self._publics}/{common.public_key_digest(public.strip())}")
        if node is None or node.dir:
            raise KeyPairNotFoundError()
        return self.get_key_pair(node.value)

    def delete_key_pair(self, id: str) -> None:
        for _ in common.retries(CAS_ATTEMPTS):
            pair, modified = self._find(id)
            if pair.deleted:
                return
            try:
                value = json.dumps(soft_deleted(pair).to_json())
                self._call(self._client.write, f"{self._keys}/{_segment(id)}", value, prev_index=modified)
                return
            except etcd.EtcdCompareFailed:
                continue
        raise common.contended(f"key pair {id}")

    def list_key_pairs(self, include_deleted: bool = False) -> list[KeyPair]:
        result = self._read(self._keys, recursive=True)
        if result is None:
            return []
        pairs = (KeyPair.from_json(json.loads(n.value)) for n in result.leaves if not n.dir and n.value)
        return newest_first(pairs, include_deleted)

    # -- lifecycle ----------------------------------------------------------------------

    def _close_connections(self) -> None:
        self._client.close()
        self._watch_client.close()
