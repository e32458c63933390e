"""An in-memory replica of the kites in etcd, for reads that do not wait on etcd.

The informer pattern of Kubernetes' clients (and etcd's own watch cache): **list** every
kite at one revision, then **watch** from the next revision and apply each change, so
``getKites`` and ``getToken`` are answered from memory. The same change feed drives the
backend's watchers, so one etcd watch stream serves both.

Consistency:

* **Other writers** (other Kontrols, ``etcdctl``, lease expiry) reach the replica with the
  watch stream's lag -- milliseconds on a healthy connection. An entry deleted in etcd is
  served no longer than that.
* **Own writes** are applied as soon as etcd acknowledged them (with their revision), so a
  process reads its own writes; the feed's copy of the same change, or any older one, is
  then ignored (each kite remembers the revision it was last changed at, deleted ones for
  :data:`TOMBSTONE_SECONDS`).
* **Watchers** start at the replica's position (:meth:`~Replica.position`, once
  :attr:`~Replica.listed`): every change after it reaches them through ``publish`` -- from
  the feed, from a re-list, or an own write the feed never brought -- except our own writes
  that reads already showed when they started.
* **Lost feed**: while the stream is down the replica is not :attr:`~Replica.ready` and the
  backend reads etcd directly; it resumes from the last revision seen. A stream that dies
  silently (no reset) is found by TCP keep-alive (:data:`KEEPALIVE_OPTIONS`, ~11 s).
* **Compaction** (events lost for good): the replica lists again and publishes the
  difference to the watchers as ``REGISTER``/``DEREGISTER`` events, so they miss nothing.
"""

from __future__ import annotations

import logging
import socket
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

import gevent
from gevent.event import Event

from kite.wire.protocol import KiteIdentity

from .base import DEREGISTER, REGISTER, KiteEvent, KiteRecord
from .watch import FeedGap

log = logging.getLogger(__name__)

#: Seconds a deleted kite's revision is remembered, so an older change arriving late (the
#: feed lags behind our own writes) cannot bring it back.
TOMBSTONE_SECONDS = 60.0
#: Tombstones kept at most (oldest dropped first).
MAX_TOMBSTONES = 100_000
#: First and longest delay between attempts to list or follow again after a failure.
MIN_BACKOFF = 0.1
MAX_BACKOFF = 5.0
#: TCP keep-alive on the watch connection: probes after 5 s idle, every 2 s, 3 lost = dead.
KEEPALIVE_OPTIONS: list[tuple[int, int, int]] = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
for _name, _value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3)):
    if hasattr(socket, _name):
        KEEPALIVE_OPTIONS.append((socket.IPPROTO_TCP, getattr(socket, _name), _value))

#: ``list() -> (revision, [(record, mod revision), ...])``: every kite at one revision.
ListAll = Callable[[], tuple[int, Iterable[tuple[KiteRecord, int]]]]
#: The change feed from a revision: ``(next revision, events)`` per message; it raises
#: :class:`~kontrol.storage.watch.FeedGap` when events were lost (compaction), another error
#: when the connection broke, and returns when the stream just ended.
Follow = Callable[[int], Iterator[tuple[int, list[KiteEvent]]]]
_Bucket = tuple[str, str, str]  # (username, environment, name)


def _bucket(kite: KiteIdentity) -> _Bucket:
    return kite.username, kite.environment, kite.name


class Replica:
    """The kites of one etcd backend in memory (see the module docstring).

    ``list_all`` and ``follow`` reach etcd; ``publish`` gets every change the feed brings
    (and the differences a re-list finds). Starts at once; :meth:`stop` ends it.
    """

    def __init__(self, name: str, list_all: ListAll, follow: Follow, publish: Callable[[KiteEvent], None]):
        self.name = name
        self._list_all = list_all
        self._follow = follow
        self._publish = publish
        self._kites: dict[str, tuple[KiteRecord, int]] = {}  # id -> (record, revision of its last change)
        self._buckets: dict[_Bucket, dict[str, KiteRecord]] = {}
        self._by_user: dict[str, set[_Bucket]] = {}
        self._tombstones: OrderedDict[str, tuple[int, float]] = OrderedDict()  # id -> (revision, when)
        # Our own writes the feed has not brought back yet: if a re-list replaces the feed,
        # their events are published from here, so watchers still hear of them.
        self._unannounced: dict[str, KiteEvent] = {}
        #: Set while the replica is in sync with etcd (listed, and its feed connected).
        self.ready = Event()
        #: Set once the first listing is in: from then on :attr:`next_revision` - 1 is a position
        #: a watcher can start from (every later change is published).
        self.listed = Event()
        #: The revision the feed resumes from.
        self.next_revision = 0
        #: Times the replica listed every kite (1 at start, +1 per compaction).
        self.lists = 0
        self._greenlet = gevent.spawn(self._run)

    # -- reads ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._kites)

    def get_by_id(self, kite_id: str) -> KiteRecord | None:
        entry = self._kites.get(kite_id)
        return entry[0] if entry is not None else None

    def revision_of(self, kite_id: str) -> int | None:
        """The revision of the kite's last change known here, or None when it is not here."""
        entry = self._kites.get(kite_id)
        return entry[1] if entry is not None else None

    def scan(self, prefix: tuple[str, ...]) -> list[KiteRecord]:
        """The kites whose first ``len(prefix)`` path fields equal ``prefix``."""
        if len(prefix) >= 3:
            bucket = self._buckets.get((prefix[0], prefix[1], prefix[2]))
            if bucket is None:
                return []
            if len(prefix) == 3:
                return list(bucket.values())
            return [r for r in bucket.values() if _path(r.kite)[: len(prefix)] == prefix]
        buckets = self._by_user.get(prefix[0], ()) if prefix else self._buckets
        return [r for b in buckets if b[: len(prefix)] == prefix for r in self._buckets[b].values()]

    # -- changes ----------------------------------------------------------------------------

    def wrote(self, record: KiteRecord, revision: int) -> None:
        """Our own write of ``record``, acknowledged by etcd at ``revision``: visible at once, and kept to
        announce unless the replica is already past ``revision`` (the listing or the feed that took it
        there carried the change; the feed will not bring it again)."""
        if self.put(record, revision) and revision >= self.next_revision:
            self._unannounced[record.kite.id] = KiteEvent(REGISTER, record.kite, record.url, record.key_id, revision)

    def deleted(self, kite: KiteIdentity, revision: int) -> None:
        """Our own delete of ``kite``, acknowledged by etcd at ``revision`` (kept to announce as :meth:`wrote`)."""
        current = self._kites.get(kite.id)
        if self.remove(kite, revision) and current is not None and revision >= self.next_revision:
            record = current[0]
            self._unannounced[kite.id] = KiteEvent(DEREGISTER, kite, record.url, record.key_id, revision)

    def position(self) -> tuple[int, dict[str, int]]:
        """Where a watcher starts: the revision every change up to which was published, and our own
        changes after it that reads already show (kite id -> revision; their events are not news)."""
        return self.next_revision - 1, {kid: event.revision for kid, event in self._unannounced.items()}

    def put(self, record: KiteRecord, revision: int) -> bool:
        """Store ``record`` changed at ``revision`` unless a later change of it is known; True if stored."""
        kid = record.kite.id
        current = self._kites.get(kid)
        if current is not None and current[1] > revision:
            return False
        tombstone = self._tombstones.get(kid)
        if tombstone is not None:
            if tombstone[0] > revision:
                return False
            del self._tombstones[kid]
        if current is not None:
            self._unindex(current[0])
        self._kites[kid] = (record, revision)
        bucket = _bucket(record.kite)
        self._buckets.setdefault(bucket, {})[kid] = record
        self._by_user.setdefault(record.kite.username, set()).add(bucket)
        return True

    def remove(self, kite: KiteIdentity, revision: int) -> bool:
        """Forget the kite with ``kite``'s id if it still has that identity and no later change; True if removed."""
        current = self._kites.get(kite.id)
        if current is None or current[1] > revision or current[0].kite != kite:
            return False
        del self._kites[kite.id]
        self._unindex(current[0])
        self._bury(kite.id, revision)
        return True

    def _unindex(self, record: KiteRecord) -> None:
        bucket = _bucket(record.kite)
        members = self._buckets.get(bucket)
        if members is not None:
            members.pop(record.kite.id, None)
            if not members:
                del self._buckets[bucket]
                users = self._by_user.get(record.kite.username)
                if users is not None:
                    users.discard(bucket)
                    if not users:
                        del self._by_user[record.kite.username]

    def _bury(self, kid: str, revision: int) -> None:
        now = time.monotonic()
        self._tombstones.pop(kid, None)
        self._tombstones[kid] = (revision, now)
        while self._tombstones:
            oldest, (_rev, when) = next(iter(self._tombstones.items()))
            if now - when < TOMBSTONE_SECONDS and len(self._tombstones) <= MAX_TOMBSTONES:
                break
            del self._tombstones[oldest]

    def apply(self, event: KiteEvent) -> bool:
        """Apply one change of the feed; True if it changed the replica."""
        mine = self._unannounced.get(event.kite.id)
        if mine is not None and event.revision >= mine.revision:
            del self._unannounced[event.kite.id]  # the feed brought it: it is announced with the feed's
        if event.action == DEREGISTER:
            return self.remove(event.kite, event.revision)
        return self.put(KiteRecord(event.kite, event.url, event.key_id), event.revision)

    # -- following ---------------------------------------------------------------------------

    def _run(self) -> None:
        backoff = MIN_BACKOFF
        listed = False
        while True:
            try:
                if not listed:
                    self._relist()
                    listed = True
                self.ready.set()
                for next_revision, events in self._follow(self.next_revision):
                    for event in events:
                        self.apply(event)
                        self._publish(event)
                    self.next_revision = max(self.next_revision, next_revision)
                    backoff = MIN_BACKOFF
                log.info("%s: change feed ended; resuming from revision %d", self.name, self.next_revision)
            except FeedGap as gap:
                log.warning("%s: %s (compaction); listing again", self.name, gap)
                listed = False
            except Exception as e:
                log.warning("%s: change feed broke (%s); reading etcd directly, resuming in %.1f s", self.name, e,
                            backoff)
            self.ready.clear()
            gevent.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _relist(self) -> None:
        """List every kite, replace the replica with them and publish what changed.

        Changes newer than the listing (our own writes, made while it was under way) are kept. The
        first listing publishes nothing: it is the starting point, and no watcher is older than it
        (the backends' ``watch`` waits for it). A later one (after a compaction) publishes our own
        changes the feed never brought, then the difference between the replica and the listing.
        """
        revision, listing = self._list_all()
        fresh = {record.kite.id: (record, rev) for record, rev in listing}
        newer = {kid: entry for kid, entry in self._kites.items() if entry[1] > revision}
        buried = [(kid, rev) for kid, (rev, _when) in self._tombstones.items() if rev > revision]
        later = {*newer, *(kid for kid, _rev in buried)}  # changed after the listing: the feed brings them
        events = []
        for kid, event in list(self._unannounced.items()):
            if event.revision <= revision:  # the ones after the listing stay: the feed resumes past it
                del self._unannounced[kid]
                events.append(event)
        for kid, (record, _rev) in self._kites.items():
            new = fresh.get(kid)
            if kid not in later and (new is None or new[0].kite != record.kite):
                events.append(KiteEvent(DEREGISTER, record.kite, record.url, record.key_id, revision))
        for kid, (record, _rev) in fresh.items():
            old = self._kites.get(kid)
            if kid not in later and (old is None or old[0] != record):
                events.append(KiteEvent(REGISTER, record.kite, record.url, record.key_id, revision))
        self._kites.clear()
        self._buckets.clear()
        self._by_user.clear()
        self._tombstones.clear()
        for record, rev in [*fresh.values(), *newer.values()]:
            self.put(record, rev)
        for kid, rev in buried:
            current = self._kites.get(kid)
            if current is not None:
                self.remove(current[0].kite, rev)
            else:
                self._bury(kid, rev)
        self.next_revision = revision + 1
        self.lists += 1
        if self.lists > 1:
            for event in events:
                self._publish(event)
            log.info("%s: listed %d kites at revision %d (%d changes published)", self.name, len(fresh), revision,
                     len(events))
        self.listed.set()

    def stop(self) -> None:
        """Stop following (the feed's connection closes as its greenlet dies)."""
        self.ready.clear()
        self._greenlet.kill(block=False)


def _path(kite: KiteIdentity) -> tuple[str, ...]:
    return (kite.username, kite.environment, kite.name, kite.version, kite.region, kite.hostname, kite.id)
