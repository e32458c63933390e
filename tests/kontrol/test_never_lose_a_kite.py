"""The registry never loses a live kite: 10k kites, etcd stopped and restarted, entries deleted behind
its back -- every live kite is in the storage afterwards (the original lost them for good)."""

from __future__ import annotations

import gevent
import pytest

from kite.wire.protocol import KiteIdentity
from kontrol.registry import WEBSOCKET, Registry
from kontrol.storage import KontrolQuery, open_storage

from .conftest import wait_until

KITES = 10_000


def identity(i: int) -> KiteIdentity:
    return KiteIdentity("math", "alice", f"id-{i:05d}", "prod", "eu", "1.0.0", f"host-{i % 50}")


@pytest.mark.timeout(240)
def test_ten_thousand_live_kites_survive_an_etcd_outage(etcd_server):
    location = f"etcd://127.0.0.1:{etcd_server.client_port}/never-lose"
    storage = open_storage(location)
    observer = open_storage(location, replica=False)  # what etcd holds, not what a replica has seen yet
    registry = Registry(storage, heartbeat_interval=60, heartbeat_delay=600, update_interval=8, key_ttl=30)
    try:
        registry.register_many([(identity(i), f"http://10.0.0.1:{i}/kite", "") for i in range(KITES)], WEBSOCKET)
        registry.start()
        assert observer.count() == KITES

        # The backend goes away for a while, refreshes fail meanwhile, then it is back.
        etcd_server.stop()
        gevent.sleep(3)
        etcd_server.start()

        # Entries lost behind the registry's back (expired during an outage, say) come back too.
        lost = [identity(i) for i in range(0, KITES, 97)]
        for kite in lost:
            observer.delete(kite)
        assert observer.count() == KITES - len(lost)
        wait_until(lambda: observer.count() == KITES, timeout=60)
        assert all(observer.get_by_id(k.id) is not None for k in lost)
        assert len(observer.get(KontrolQuery(username="alice"))) == KITES
    finally:
        registry.stop()
        storage.close()
        observer.close()
