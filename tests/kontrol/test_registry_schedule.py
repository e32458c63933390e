"""The registry's refresher on a clock the test moves: what a tick touches, when kites are
refreshed, when a kite that stopped heartbeating is dropped, and that a wake-up left over from
an earlier registration never acts on a newer one."""

from __future__ import annotations

import time
import types
import uuid

import gevent
import pytest

import kontrol.registry as registry_module
from kite.wire.protocol import KiteIdentity
from kontrol.registry import HTTP, SELF, WEBSOCKET, Registry
from kontrol.storage import MemoryStorage

KEY_ID = str(uuid.uuid4())
#: The registry's timings here: a kite that heartbeats is overdue 30 s after its last heartbeat.
HEARTBEAT_INTERVAL, HEARTBEAT_DELAY, UPDATE_INTERVAL, KEY_TTL = 10.0, 20.0, 60.0, 90.0
OVERDUE = HEARTBEAT_INTERVAL + HEARTBEAT_DELAY


class Clock:
    """``time.monotonic`` for the registry module, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


class CountingStorage(MemoryStorage):
    """Counts refreshes per kite id."""

    def __init__(self) -> None:
        super().__init__()
        self.refreshes: dict[str, int] = {}

    def refresh(self, kite, ttl):  # type: ignore[no-untyped-def]
        kid = kite if isinstance(kite, str) else kite.id
        self.refreshes[kid] = self.refreshes.get(kid, 0) + 1
        return super().refresh(kite, ttl)


class CountingDict(dict):
    """The registry's entries, counting the lookups a tick makes."""

    lookups = 0

    def get(self, key, default=None):  # type: ignore[no-untyped-def, override]
        self.lookups += 1
        return super().get(key, default)

    def items(self):  # type: ignore[no-untyped-def, override]
        self.lookups += len(self)
        return super().items()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(registry_module, "time", types.SimpleNamespace(monotonic=fake.monotonic, time=time.time))
    return fake


@pytest.fixture
def storage() -> CountingStorage:
    s = CountingStorage()
    yield s
    s.close()


@pytest.fixture
def registry(storage: CountingStorage, clock: Clock) -> Registry:
    r = Registry(storage, heartbeat_interval=HEARTBEAT_INTERVAL, heartbeat_delay=HEARTBEAT_DELAY,
                 update_interval=UPDATE_INTERVAL, key_ttl=KEY_TTL)
    r._entries = CountingDict()  # not started: the test ticks it
    yield r
    r.stop()


def make_kite() -> KiteIdentity:
    return KiteIdentity(username="alice", environment="production", name="svc", version="1.0.0", region="eu",
                        hostname="h1", id=str(uuid.uuid4()))


def tick(registry: Registry, clock: Clock, at: float) -> None:
    """Move the clock to ``at`` (seconds after the start) and run one tick and the refreshes it started."""
    clock.now = 1000.0 + at
    registry._tick()
    registry._pool.join()
    gevent.sleep(0)


def test_a_tick_touches_only_what_is_due(registry: Registry, clock: Clock, storage: CountingStorage) -> None:
    kites = [make_kite() for _ in range(10_000)]
    registry.register_many([(k, "http://h/kite", KEY_ID) for k in kites], HTTP)
    entries = registry._entries
    assert isinstance(entries, CountingDict)
    for at in (0.5, 10.0, 29.5):
        entries.lookups = 0
        tick(registry, clock, at)
        assert entries.lookups == 0, f"a tick at {at} s with nothing due looked at {entries.lookups} entries"
    beating = kites[:100]
    clock.now = 1020.0
    for k in beating:
        assert registry.seen(k.id)
    entries.lookups = 0
    tick(registry, clock, OVERDUE)  # every kite's overdue check is due: 9,900 go, 100 heartbeated
    assert entries.lookups == len(kites)
    assert len(registry) == 100 and all(k.id in registry for k in beating)
    assert storage.refreshes == {}
    entries.lookups = 0
    tick(registry, clock, OVERDUE + 5)
    assert entries.lookups == 0


def test_kites_are_refreshed_once_per_update_interval(registry: Registry, clock: Clock,
                                                      storage: CountingStorage) -> None:
    kites = [make_kite() for _ in range(200)]
    registry.register_many([(k, "http://h/kite", KEY_ID) for k in kites], WEBSOCKET)
    at = 0.0
    while at < 10 * UPDATE_INTERVAL:
        at += 0.5
        if at % HEARTBEAT_INTERVAL == 0:
            clock.now = 1000.0 + at
            assert all(registry.seen(k.id) for k in kites)
        tick(registry, clock, at)
    counts = [storage.refreshes.get(k.id, 0) for k in kites]
    # due every 48-60 s (the last fifth of the interval, jittered): 10-12 refreshes in 600 s
    assert 10 <= min(counts) and max(counts) <= 13, sorted(set(counts))
    assert len(registry) == len(kites)
    assert len(registry._wakeups) <= 2 * len(kites)


def test_heartbeats_keep_a_kite_and_their_end_drops_it(registry: Registry, clock: Clock) -> None:
    beating, quiet, kontrol_itself = make_kite(), make_kite(), make_kite()
    for kite, kind in ((beating, HTTP), (quiet, HTTP), (kontrol_itself, SELF)):
        registry.register(kite, "http://h/kite", KEY_ID, kind)
    at = 0.0
    while at < 10 * OVERDUE:
        at += 0.5
        if at % HEARTBEAT_INTERVAL == 0:
            clock.now = 1000.0 + at
            assert registry.seen(beating.id)
        tick(registry, clock, at)
        if at < OVERDUE:
            assert quiet.id in registry, at
        if at >= OVERDUE:
            assert quiet.id not in registry, f"still there {at} s after its last heartbeat"
    assert beating.id in registry and kontrol_itself.id in registry
    # A heartbeat moves the overdue check on without adding wake-ups: a few per kite, not one per heartbeat.
    assert len(registry._wakeups) <= 6


def test_an_old_wakeup_never_acts_on_a_newer_registration(registry: Registry, clock: Clock,
                                                          storage: CountingStorage) -> None:
    kite = make_kite()
    registry.register(kite, "http://h/kite", KEY_ID, HTTP)  # overdue check at 30 s, refresh at 48-60 s
    registry.deregister(kite.id)
    clock.now = 1025.0
    registry.register(kite, "http://h/kite", KEY_ID, HTTP)  # again: overdue at 55 s
    tick(registry, clock, OVERDUE + 0.5)
    assert kite.id in registry, "dropped by the first registration's overdue check"
    tick(registry, clock, 25 + OVERDUE)
    assert kite.id not in registry
    assert storage.refreshes == {}, "the first registration's refresh ran"
