"""Liveness of registered kites, and keeping the storage in step with it (PROTOCOL.md §7.2, §7.7-7.8).

The original lost live kites under load: its refreshes came in one burst that
exhausted an unbounded database pool, a refresh only updated rows that still
existed, and on etcd refreshes that timed out let entries expire for good.
Here the set of live registrations in memory is what counts, and the storage
is made to agree with it:

* each live kite is refreshed on its own jittered schedule, a bounded number
  at a time, so refreshes never come in one burst;
* a refresh that finds the entry gone writes it again;
* a refresh that fails because the storage is unavailable is retried soon,
  and the kite stays live in memory meanwhile;
* a kite registered over a websocket is deleted as soon as its connection
  closes; one registered over HTTP expires when it stops heartbeating;
* an HTTP heartbeat of a kite this registry does not know, but the storage has
  (registered through another Kontrol process on the same storage -- another
  ``--workers`` process, or this one before a restart), adopts it: ``pong``, not
  ``registeragain``, and this registry keeps it refreshed from then on -- but never
  writes it back once the storage lost it (heartbeats carry no credentials, so a
  stranger's heartbeats must not resurrect a kite its own Kontrol deleted); the kite
  is told ``registeragain`` then and registers itself;
* such a heartbeat while the storage cannot be read (an outage, a lookup that timed
  out) is answered ``pong`` and decided at the kite's next heartbeat: telling every
  kite to register again would only add a wave of registrations to a storage that is
  failing already, and a pong grants nothing (heartbeats carry no credentials).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import random
import time
from dataclasses import dataclass, field

import gevent
from gevent.pool import Pool

from kite.wire.protocol import KiteIdentity

from .storage import KiteRecord, Storage, StorageError, StorageUnavailableError

log = logging.getLogger("kontrol.registry")

#: Interval kites are told to heartbeat at, seconds (Go ``HeartbeatInterval``).
HEARTBEAT_INTERVAL = 10.0
#: Grace after a missed heartbeat: a kite is gone after interval + delay (Go ``HeartbeatDelay``).
HEARTBEAT_DELAY = 20.0
#: Minimum time between storage refreshes of one kite (Go ``UpdateInterval``).
UPDATE_INTERVAL = 60.0
#: Storage TTL of an entry; must outlast UPDATE_INTERVAL plus a retry (Go ``KeyTTL``).
KEY_TTL = 90.0
#: Storage calls the refresher makes at once: bounded, so a burst can never exhaust
#: the backend's connection pool.
REFRESH_CONCURRENCY = 8
#: Seconds before retrying a refresh that failed because the storage was unavailable.
RETRY_DELAY = 2.0
#: How often the refresher looks for due work, seconds.
TICK = 0.5

WEBSOCKET = "websocket"
HTTP = "http"
#: Kontrol's own entry: live for as long as the registry runs, with no heartbeat to miss.
SELF = "self"


@dataclass
class Entry:
    """One live registration."""

    kite: KiteIdentity
    url: str
    key_id: str
    kind: str
    last_seen: float
    next_refresh: float
    written: bool = field(default=False)
    #: Taken over from the storage on a heartbeat (:meth:`Registry.seen`), not registered here.
    adopted: bool = field(default=False)
    #: Wall-clock time (Unix seconds) it registered here, or was adopted; ``last_seen`` is monotonic.
    registered_at: float = field(default_factory=time.time)
    #: When the refresher looks at it next (its earliest pending wake-up; inf: none pending).
    wake: float = field(default=float("inf"), repr=False, compare=False)


class Registry:
    """Live registrations of one Kontrol, kept in its storage."""

    def __init__(
        self,
        storage: Storage,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        heartbeat_delay: float = HEARTBEAT_DELAY,
        update_interval: float = UPDATE_INTERVAL,
        key_ttl: float = KEY_TTL,
    ):
        self.storage = storage
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_delay = heartbeat_delay
        self.update_interval = update_interval
        self.key_ttl = key_ttl
        self._entries: dict[str, Entry] = {}
        #: ``(when, n, entry)``: when the refresher must look at an entry (its refresh is due or its
        #: heartbeats are overdue). Lazy: an item whose time is no longer its entry's ``wake`` is skipped.
        self._wakeups: list[tuple[float, int, Entry]] = []
        self._pushes = itertools.count()
        self._pool = Pool(REFRESH_CONCURRENCY)
        self._refresher: gevent.Greenlet | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        """Start refreshing in the background."""
        if self._refresher is None or self._refresher.dead:
            self._refresher = gevent.spawn(self._refresh_loop)

    def stop(self) -> None:
        """Stop refreshing (entries stay in the storage until their TTL)."""
        if self._refresher is not None:
            self._refresher.kill(block=False)
        self._pool.kill(block=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, kite_id: str) -> bool:
        return kite_id in self._entries

    def entry(self, kite_id: str) -> Entry | None:
        """The live registration of ``kite_id`` here, or None (read-only: for views like the dashboard)."""
        return self._entries.get(kite_id)

    def entries(self) -> list[Entry]:
        """Every live registration here (read-only)."""
        return list(self._entries.values())

    # -- registration -------------------------------------------------------------------

    def register(self, kite: KiteIdentity, url: str, key_id: str, kind: str) -> None:
        """Record a live kite and write it to the storage now.

        Raises :class:`StorageError` if the first write fails (the caller answers
        ``internal error - register``); the kite is not live then.
        """
        now = time.monotonic()
        entry = Entry(kite, url, key_id, kind, now, self._next(now), written=False)
        self.storage.upsert(kite, url, key_id, self.key_ttl)
        entry.written = True
        self._add(entry)

    def register_many(self, records: list[tuple[KiteIdentity, str, str]], kind: str) -> None:
        """:meth:`register` many ``(kite, url, key_id)`` at once (one batched storage write)."""
        self.storage.upsert_many([KiteRecord(kite, url, key_id) for kite, url, key_id in records], self.key_ttl)
        now = time.monotonic()
        for kite, url, key_id in records:
            self._add(Entry(kite, url, key_id, kind, now, self._next(now), written=True))

    def _add(self, entry: Entry) -> None:
        self._entries[entry.kite.id] = entry
        self._schedule(entry)

    def seen(self, kite_id: str) -> bool:
        """A heartbeat from ``kite_id``: ``False`` if neither this registry nor the storage has it
        (→ "registeragain")."""
        entry = self._entries.get(kite_id)
        if entry is None:
            return self._adopt(kite_id)
        entry.last_seen = time.monotonic()  # its overdue check, when it comes, finds it alive and looks later
        if not entry.written:
            entry.next_refresh = 0.0  # rewrite it at the next tick
            self._schedule(entry)
        return True

    def _adopt(self, kite_id: str) -> bool:
        """Take over the HTTP kite ``kite_id`` from the storage; ``False`` if it is not there (or the
        lookup failed for good); ``True`` without taking it over while the storage is unavailable."""
        try:
            record = self.storage.get_by_id(kite_id)
        except StorageUnavailableError as exc:
            log.warning("looking up heartbeating kite %s: %s; asking again at its next heartbeat", kite_id, exc)
            return True
        except StorageError as exc:
            log.warning("looking up heartbeating kite %s failed: %s", kite_id, exc)
            return False
        if record is None:
            return False
        now = time.monotonic()
        # Refreshed at the next tick, not an update interval from now: the entry was last refreshed by
        # the Kontrol that registered it, up to an update interval ago (and that one may be dead), so
        # waiting another interval could let it expire -- and an adopted kite that expired is dropped.
        self._add(Entry(record.kite, record.url, record.key_id, HTTP, now, 0.0, written=True, adopted=True))
        log.debug("%s heartbeats here: adopted from the storage", record.kite)
        return True

    def deregister(self, kite_id: str) -> None:
        """Remove a kite now (its websocket closed)."""
        entry = self._entries.pop(kite_id, None)
        if entry is None:
            return
        try:
            self.storage.delete(entry.kite)
        except StorageUnavailableError as exc:
            # The storage is down for a moment (an etcd election, a lost quorum): keep trying, or the
            # kite stays findable for up to a whole TTL (90 s by default) after it left.
            log.warning("deleting %s failed (%s); retrying until its TTL would remove it", entry.kite, exc)
            self._pool.spawn(self._delete_later, entry.kite, time.monotonic() + self.key_ttl)
        except StorageError as exc:
            log.warning("deleting %s failed (%s); it will expire by TTL", entry.kite, exc)

    def _delete_later(self, kite: KiteIdentity, until: float) -> None:
        """Retry deleting a kite that left, until ``until`` (when its TTL removes it anyway), unless it
        registered again meanwhile."""
        while time.monotonic() < until:
            gevent.sleep(RETRY_DELAY * random.uniform(0.25, 0.75))
            if kite.id in self._entries:
                return  # back: its new registration is what counts
            try:
                self.storage.delete(kite)
                return
            except StorageUnavailableError:
                continue
            except StorageError as exc:
                log.warning("deleting %s failed (%s); it will expire by TTL", kite, exc)
                return

    # -- refreshing ---------------------------------------------------------------------

    def _next(self, now: float) -> float:
        # Spread refreshes over the last fifth of the interval instead of one burst.
        return now + self.update_interval * random.uniform(0.8, 1.0)

    def _refresh_loop(self) -> None:
        while True:
            try:
                self._tick()
            except Exception:
                log.exception("refresh tick failed")
            gevent.sleep(TICK)

    def _schedule(self, entry: Entry) -> None:
        """Have the refresher look at ``entry`` when its refresh is due or, for a kite that heartbeats,
        when it would be overdue (a heartbeat since then only moves that check on: the entry is looked
        at about once per heartbeat deadline, not at every tick)."""
        at = entry.next_refresh
        if entry.kind != SELF:
            at = min(at, entry.last_seen + self.heartbeat_interval + self.heartbeat_delay)
        if at < entry.wake:
            entry.wake = at
            heapq.heappush(self._wakeups, (at, next(self._pushes), entry))

    def _tick(self) -> None:
        """Refresh the entries that are due and drop those whose heartbeats stopped: only those are
        touched (a heap of wake-ups), so a tick costs what is due, not what is registered."""
        now = time.monotonic()
        deadline = self.heartbeat_interval + self.heartbeat_delay
        while self._wakeups and self._wakeups[0][0] <= now:
            at, _, entry = heapq.heappop(self._wakeups)
            kite_id = entry.kite.id
            if at != entry.wake or self._entries.get(kite_id) is not entry:
                continue  # superseded by an earlier wake-up, or no longer registered
            entry.wake = float("inf")
            if entry.kind != SELF and now - entry.last_seen >= deadline:
                # Gone quiet: stop refreshing; the storage TTL removes it (§7.8).
                log.info("%s stopped heartbeating; letting it expire", entry.kite)
                del self._entries[kite_id]
                continue
            if entry.next_refresh <= now:
                entry.next_refresh = float("inf")  # in progress: _refresh schedules it when done
                self._pool.spawn(self._refresh, entry)
            self._schedule(entry)  # strictly later now: the overdue check (and the refresh) to come

    def _refresh(self, entry: Entry) -> None:
        try:
            if not self.storage.refresh(entry.kite, self.key_ttl):
                if entry.adopted:
                    # Not ours to bring back: whoever registered it deleted it (a websocket kite that
                    # left -- heartbeats are unauthenticated, anyone can send its id), or it expired.
                    if self._entries.get(entry.kite.id) is entry:  # not a registration made since
                        del self._entries[entry.kite.id]
                    log.info("%s, adopted on a heartbeat, is gone from the storage; forgetting it", entry.kite)
                    return
                # The entry vanished (expired during an outage, or deleted): write it again.
                self.storage.upsert(entry.kite, entry.url, entry.key_id, self.key_ttl)
            entry.written = True
            entry.next_refresh = self._next(time.monotonic())
        except StorageUnavailableError as exc:
            log.warning("storage unavailable refreshing %s: %s; retrying", entry.kite, exc)
            entry.next_refresh = self._retry_time()
        except StorageError as exc:
            log.error("refreshing %s failed: %s", entry.kite, exc)
            entry.next_refresh = self._retry_time()
        except Exception:  # a bug must not stop this kite's refreshes for good
            log.exception("refreshing %s failed", entry.kite)
            entry.next_refresh = self._retry_time()
        self._schedule(entry)

    @staticmethod
    def _retry_time() -> float:
        return time.monotonic() + RETRY_DELAY * random.uniform(0.5, 1.5)
