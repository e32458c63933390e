"""Shared leases on etcd v3 (kontrol.storage.etcd_leases) against a real etcd: an instance expires its
own kites on time, leaves alone those another instance took over, loses nothing when its lease is
revoked behind its back, and a crashed instance's kites go with its lease unless refreshed elsewhere."""

from __future__ import annotations

import os
import time

import gevent
import pytest
from etcd3gw.client import Etcd3Client

from kontrol.storage import DEREGISTER
from kontrol.storage.etcd import EtcdStorage

from .conftest import Recorder, wait_until
from .test_storage import make_kite


@pytest.fixture
def location(etcd_server):
    return {"host": "127.0.0.1", "port": etcd_server.client_port, "prefix": f"/leases-{os.urandom(4).hex()}"}


@pytest.fixture
def opened(location):
    storages: list[EtcdStorage] = []

    def open_() -> EtcdStorage:
        storage = EtcdStorage(**location)
        assert storage.replica is not None and storage.replica.ready.wait(5)
        storages.append(storage)
        return storage

    yield open_
    for storage in storages:
        storage.close()


def refreshing(storage: EtcdStorage, kite, ttl: int, every: float = 0.5) -> gevent.Greenlet:
    def loop() -> None:
        while True:
            assert storage.refresh(kite, ttl)
            gevent.sleep(every)

    return gevent.spawn(loop)


def test_a_kite_expires_on_time_while_its_lease_mate_is_refreshed(opened) -> None:
    storage, observer = opened(), opened()
    recorder = Recorder()
    observer.watch({"username": "alice"}, recorder)
    quiet, busy = make_kite(), make_kite(hostname="worker-2")
    started = time.monotonic()
    storage.upsert(quiet, "http://q/kite", "k", ttl=3)
    storage.upsert(busy, "http://b/kite", "k", ttl=3)
    assert storage._index(quiet.id).lease == storage._index(busy.id).lease
    keeper = refreshing(storage, busy, 3)
    try:
        recorder.wait_for(lambda events: (DEREGISTER, quiet.id) in [(e.action, e.kite.id) for e in events], 10)
        took = time.monotonic() - started
        assert 3 <= took < 4.5, took  # its TTL, plus the sweep and the watch
        gevent.sleep(4)  # more than a TTL: the refreshed one stays
        assert observer.get_by_id(busy.id) is not None and observer.get_by_id(quiet.id) is None
    finally:
        keeper.kill()


def test_a_kite_another_instance_refreshes_is_not_expired_by_the_one_that_wrote_it(opened) -> None:
    first, second = opened(), opened()
    kite = make_kite()
    first.upsert(kite, "http://k/kite", "k", ttl=3)
    keeper = refreshing(second, kite, 3)  # it heartbeats through the second now: onto its lease at once
    try:
        wait_until(lambda: second._index(kite.id).lease == second.leases.lease_for(3).id, 5)
        gevent.sleep(5)  # the first's expiry of it came and went, guarded by the first's write
        assert first.get_by_id(kite.id) is not None and first.leases.member(kite.id, 3) is None
    finally:
        keeper.kill()
    wait_until(lambda: first.get_by_id(kite.id) is None, 6)  # the second stopped: the second expires it


def test_a_crashed_instances_kites_go_with_its_lease_unless_refreshed_elsewhere(opened, location) -> None:
    crashed, survivor = EtcdStorage(**location), opened()
    moved, dead = make_kite(), make_kite(hostname="worker-2")
    crashed.upsert(moved, "http://m/kite", "k", ttl=3)
    crashed.upsert(dead, "http://d/kite", "k", ttl=3)
    crashed.leases.close()  # stops keeping its lease alive and expiring kites, as a killed process would
    crashed._http.close()
    keeper = refreshing(survivor, moved, 3)
    try:
        wait_until(lambda: survivor.get_by_id(dead.id) is None, 10)  # the lease expired, with what it held
        assert survivor.get_by_id(moved.id) is not None
    finally:
        keeper.kill()


def test_a_lease_revoked_behind_our_back_loses_nothing_for_good(opened, etcd_server) -> None:
    storage = opened()
    raw = Etcd3Client(host="127.0.0.1", port=etcd_server.client_port)
    kite = make_kite()
    storage.upsert(kite, "http://k/kite", "k", ttl=30)
    lease = storage.leases.lease_for(30).id
    raw.post(raw.get_url("/kv/lease/revoke"), json={"ID": lease})  # etcdctl lease revoke
    wait_until(lambda: storage.get_by_id(kite.id) is None, 5)
    assert storage.refresh(kite, 30) is False  # gone: the registry writes it again
    newcomer = make_kite(hostname="worker-3")
    storage.upsert(newcomer, "http://n/kite", "k", ttl=30)  # the dead lease is noticed and replaced
    storage.upsert(kite, "http://k/kite", "k", ttl=30)
    assert storage.leases.lease_for(30).id != lease
    assert {r.kite.id for r in storage.get({"username": "alice"})} == {kite.id, newcomer.id}
