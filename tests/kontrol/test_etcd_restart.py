"""etcd goes away mid-run and comes back: the same storage objects and watchers recover."""

from __future__ import annotations

import uuid

import pytest

from kontrol.storage import REGISTER, StorageUnavailableError, open_storage

from .conftest import EtcdServer, Recorder, wait_until
from .test_storage import LONG_TTL, make_kite

#: How long a recovered etcd (restart + leader election) plus the watch's reconnection
#: backoff may take before the storage works again.
RECOVERY_TIMEOUT = 20.0


def _works(storage, query) -> bool:
    try:
        storage.get(query)
    except StorageUnavailableError:
        return False
    return True


@pytest.mark.parametrize("kind", ["etcd", "etcd2"])
def test_backend_recovers_after_etcd_restart(etcd_server: EtcdServer, kind: str) -> None:
    location = f"{kind}://127.0.0.1:{etcd_server.client_port}/restart-{uuid.uuid4().hex[:8]}"
    user = {"username": "alice"}
    with open_storage(location, timeout=2) as storage, open_storage(location, timeout=2) as other:
        recorder = Recorder()
        storage.watch(user, recorder)
        permanent, expiring = make_kite(), make_kite()
        storage.upsert(permanent, "http://p/kite", "k1")
        storage.upsert(expiring, "http://e/kite", "k2", ttl=LONG_TTL)
        recorder.wait_for(lambda events: len(events) == 2)

        etcd_server.stop()
        with pytest.raises(StorageUnavailableError):
            storage.get(user)
        with pytest.raises(StorageUnavailableError):
            storage.upsert(make_kite(), "http://x/kite")

        etcd_server.start()  # same ports, same data dir
        wait_until(lambda: _works(storage, user), RECOVERY_TIMEOUT)
        assert {r.kite.id for r in storage.get(user)} == {permanent.id, expiring.id}
        assert storage.refresh(expiring, LONG_TTL) is True

        # The watch stream reconnected: it sees writes by this and by another instance.
        mine, theirs = make_kite(), make_kite()
        storage.upsert(mine, "http://m/kite")
        other.upsert(theirs, "http://t/kite")
        recorder.wait_for(lambda events: len(events) >= 4, RECOVERY_TIMEOUT)
        assert recorder.actions()[2:] == [(REGISTER, mine.id), (REGISTER, theirs.id)]
        assert storage.count() == 4
