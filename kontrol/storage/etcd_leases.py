"""Shared leases for etcd v3: one lease per TTL for all the kites one storage instance writes.

A lease of its own per kite costs etcd a lease grant (a consensus round, more CPU than the
kite's write itself) for every registration, and a keep-alive per kite per refresh. Here
every kite this instance writes with TTL ``t`` is attached to one lease of ``t`` seconds
that the instance keeps alive (every ``t / 3`` seconds) while it runs, and the instance
expires each kite itself: it notes when each kite is due (``t`` seconds after its write or
its last refresh) and deletes it then, guarded by the revision of its own last write (so a
kite another instance has since written is left alone). A refresh of a kite is then no
round trip at all.

If the instance dies, its lease expires ``t`` seconds after the last keep-alive and takes
every kite still attached with it -- the live ones have moved by then: a kite heartbeating
through another instance is written onto that instance's lease at its first refresh there.
So a kite whose Kontrol crashed disappears at most ``t`` seconds after the crash (with a
lease of its own: ``t`` seconds after its last refresh, which may have been up to an update
interval before the crash).
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import gevent
from gevent.lock import Semaphore
from gevent.pool import Group, Pool

from .base import KiteRecord
from .errors import StorageError, StorageUnavailableError

log = logging.getLogger(__name__)

#: How often due kites are looked for, seconds (the precision of expiry, beside etcd's own).
SWEEP_INTERVAL = 0.25
#: Seconds before trying again to keep a lease alive, or to expire a kite, after etcd failed.
RETRY_DELAY = 1.0
#: Expiring deletes in flight at once (they share transactions through the batcher).
EXPIRE_CONCURRENCY = 32


@dataclass
class Member:
    """A kite attached to one of our shared leases by our own write of it."""

    record: KiteRecord
    #: The revision of that write: the guard of its expiry (another writer's change moves it).
    revision: int
    #: ``time.monotonic()`` when it expires unless refreshed.
    deadline: float


@dataclass
class SharedLease:
    """One lease of ``ttl`` seconds and the kites of ours on it."""

    id: int
    ttl: int
    members: dict[str, Member] = field(default_factory=dict)
    alive: bool = True
    #: ``time.monotonic()`` when it is next kept alive (None: a keep-alive is under way).
    keep_alive_at: float | None = field(init=False)

    def __post_init__(self) -> None:
        self.keep_alive_at = time.monotonic() + self.interval

    @property
    def interval(self) -> float:
        """Seconds between keep-alives: a third of its TTL (at least :data:`RETRY_DELAY`)."""
        return max(RETRY_DELAY, self.ttl / 3)


class SharedLeases:
    """The shared leases of one storage instance (see the module docstring).

    ``grant(ttl)`` makes a lease and returns its id; ``keep_alive(id)`` restarts one and says
    whether it was still alive; ``expire(member)`` deletes a kite that is due unless it changed
    since our write.
    """

    def __init__(self, grant: Callable[[int], int], keep_alive: Callable[[int], bool],
                 expire: Callable[[Member], None]) -> None:
        self._grant = grant
        self._keep_alive = keep_alive
        self._expire = expire
        self._leases: dict[int, SharedLease] = {}  # by TTL: the lease new writes go to
        self._granting = Semaphore()
        self._due: list[tuple[float, str, int]] = []  # (deadline, kite id, lease id), stale entries skipped
        self._expiring = Pool(EXPIRE_CONCURRENCY)
        self._keeping = Group()
        self._sweeper = gevent.spawn(self._sweep_forever)

    # -- leases -----------------------------------------------------------------------------

    def lease_for(self, ttl: int) -> SharedLease:
        """The live shared lease of ``ttl`` seconds, granted on first use (concurrent callers share it)."""
        lease = self._leases.get(ttl)
        if lease is not None and lease.alive:
            return lease
        with self._granting:
            lease = self._leases.get(ttl)
            if lease is None or not lease.alive:
                lease = self._leases[ttl] = SharedLease(self._grant(ttl), ttl)
                log.debug("granted shared lease %x of %d s", lease.id, ttl)
            return lease

    def lost(self, lease: SharedLease) -> None:
        """``lease`` is gone in etcd (expired, revoked): forget it and its kites (their keys went with it)."""
        lease.alive = False
        lease.members.clear()
        if self._leases.get(lease.ttl) is lease:
            del self._leases[lease.ttl]

    # -- kites ------------------------------------------------------------------------------

    def joined(self, lease: SharedLease, record: KiteRecord, revision: int) -> None:
        """Our write of ``record`` at ``revision`` attached it to ``lease``: due ``lease.ttl`` seconds from now."""
        self.leave(record.kite.id)
        member = lease.members[record.kite.id] = Member(record, revision, 0.0)
        self._due_in(lease, member, lease.ttl)

    def member(self, kite_id: str, ttl: int) -> Member | None:
        """The kite as a member of our live lease of ``ttl`` seconds, or None."""
        lease = self._leases.get(ttl)
        return lease.members.get(kite_id) if lease is not None and lease.alive else None

    def refreshed(self, member: Member, ttl: int) -> None:
        """``member`` (of our lease of ``ttl`` seconds) was refreshed: due ``ttl`` seconds from now."""
        self._due_in(self._leases[ttl], member, ttl)

    def _due_in(self, lease: SharedLease, member: Member, seconds: float) -> None:
        """Make ``member`` of ``lease`` due ``seconds`` from now (earlier entries of it become stale)."""
        member.deadline = time.monotonic() + seconds
        heapq.heappush(self._due, (member.deadline, member.record.kite.id, lease.id))

    def leave(self, kite_id: str) -> None:
        """Stop tracking the kite (deleted, or written again elsewhere)."""
        for lease in self._leases.values():
            lease.members.pop(kite_id, None)

    # -- background -------------------------------------------------------------------------

    def _keep_one_alive(self, lease: SharedLease) -> None:
        """Keep ``lease`` alive once, and say when next."""
        wait = lease.interval
        try:
            if not self._keep_alive(lease.id):
                log.warning("shared lease %x of %d s expired: its %d kites are gone from etcd (they are written "
                            "again at their next refresh)", lease.id, lease.ttl, len(lease.members))
                self.lost(lease)
        except StorageError as exc:
            log.warning("keeping shared lease %x alive: %s; retrying", lease.id, exc)
            wait = RETRY_DELAY
        finally:
            lease.keep_alive_at = time.monotonic() + wait

    def _sweep_forever(self) -> None:
        while True:
            gevent.sleep(SWEEP_INTERVAL)
            try:
                self._sweep(time.monotonic())
            except Exception:
                log.exception("expiring kites failed")

    def _sweep(self, now: float) -> None:
        for lease in list(self._leases.values()):
            if lease.keep_alive_at is not None and lease.keep_alive_at <= now:
                lease.keep_alive_at = None
                self._keeping.spawn(self._keep_one_alive, lease)
        while self._due and self._due[0][0] <= now:
            _, kite_id, lease_id = heapq.heappop(self._due)
            lease = next((lease for lease in self._leases.values() if lease.id == lease_id), None)
            member = lease.members.get(kite_id) if lease is not None else None
            if lease is None or member is None or member.deadline > now:
                continue  # refreshed since (a later entry is due), or no longer ours
            del lease.members[kite_id]
            self._expiring.spawn(self._expire_one, lease, member)

    def _expire_one(self, lease: SharedLease, member: Member) -> None:
        try:
            self._expire(member)
        except StorageUnavailableError as exc:
            # Try again while the lease lives (when it expires, the kite's keys go with it anyway).
            log.debug("expiring %s: %s; retrying", member.record.kite, exc)
            if lease.alive and member.record.kite.id not in lease.members:
                lease.members[member.record.kite.id] = member
                self._due_in(lease, member, RETRY_DELAY)
        except StorageError as exc:
            log.warning("expiring %s failed: %s", member.record.kite, exc)

    def close(self) -> None:
        """Stop keeping the leases alive and expiring kites (what is attached stays until the leases expire)."""
        self._sweeper.kill(block=False)
        self._expiring.kill(block=False)
        self._keeping.kill(block=False)
