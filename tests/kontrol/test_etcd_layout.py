"""What the etcd backends write, read with plain clients: readable keys, and the Go Kontrol's v2 layout."""

from __future__ import annotations

import json
import uuid

import etcd
import pytest
from etcd3gw.client import Etcd3Client

from kontrol.storage import DEREGISTER, REGISTER, KontrolQuery, open_storage

from .conftest import EtcdServer, Recorder
from .test_storage import LONG_TTL, make_kite


@pytest.fixture
def prefix() -> str:
    return f"/layout-{uuid.uuid4().hex[:8]}"


def test_v2_layout_is_the_go_kontrols(etcd_server: EtcdServer, prefix: str) -> None:
    raw = etcd.Client(host="127.0.0.1", port=etcd_server.client_port)
    kite = make_kite()
    with open_storage(f"etcd2://127.0.0.1:{etcd_server.client_port}{prefix}") as storage:
        storage.upsert(kite, "http://10.0.4.17:6000/kite", "key-1", ttl=LONG_TTL)
        path = f"{prefix}/kites/alice/production/math/1.0.0/eu-west/worker-1/{kite.id}"
        node = raw.read(path)
        assert node.value == '{"url":"http://10.0.4.17:6000/kite","key_id":"key-1"}'
        assert 0 < node.ttl <= LONG_TTL
        by_id = raw.read(f"{prefix}/kites/{kite.id}")
        assert json.loads(by_id.value)["url"] == "http://10.0.4.17:6000/kite"
        assert json.loads(by_id.value)["key_id"] == "key-1"
        assert 0 < by_id.ttl <= LONG_TTL

        storage.delete(kite)
        for key in (path, f"{prefix}/kites/{kite.id}"):
            with pytest.raises(etcd.EtcdKeyNotFound):
                raw.read(key)


def test_v2_reads_what_a_go_kontrol_wrote(etcd_server: EtcdServer, prefix: str) -> None:
    raw = etcd.Client(host="127.0.0.1", port=etcd_server.client_port)
    with open_storage(f"etcd2://127.0.0.1:{etcd_server.client_port}{prefix}") as storage:
        recorder = Recorder()
        storage.watch({"username": "alice"}, recorder)
        kite = make_kite()
        value = '{"url":"http://go/kite","key_id":"go-key"}'
        raw.write(f"{prefix}/kites{kite}", value, ttl=LONG_TTL)  # exactly what Go's Etcd.Add does
        raw.write(f"{prefix}/kites/{kite.id}", value, ttl=LONG_TTL)

        [record] = storage.get(KontrolQuery(username="alice", environment="production"))
        assert (record.kite, record.url, record.key_id) == (kite, "http://go/kite", "go-key")
        assert storage.get({"id": kite.id}) == [record]  # found by scanning: Go's id entry has no path
        assert storage.count() == 1
        assert storage.refresh(kite.id, LONG_TTL) is True
        assert storage.delete(kite.id) is True
        assert storage.get({"username": "alice"}) == []
        recorder.wait_for(lambda events: len(events) == 2)
        assert recorder.actions() == [(REGISTER, kite.id), (DEREGISTER, kite.id)]


def test_v2_pipelines_both_keys_and_still_ends_on_the_new_identity(etcd_server: EtcdServer, prefix: str) -> None:
    """A registration pipelines the two v2 keys unless this instance last wrote the kite
    with another identity. When another writer had given the id another identity (this instance
    could not know), the old path is deleted and the new one written again: the new identity is the
    last word for a watcher, and only its path stays."""
    url = f"etcd2://127.0.0.1:{etcd_server.client_port}{prefix}"
    raw = etcd.Client(host="127.0.0.1", port=etcd_server.client_port)
    with open_storage(url) as ours, open_storage(url) as other:
        kite = make_kite()
        recorder = Recorder()
        ours.watch({"id": kite.id}, recorder)
        batches = []
        write_all = ours._client.write_all
        ours._client.write_all = lambda writes: batches.append([key for key, _, _ in writes]) or write_all(writes)
        ours.upsert(kite, "http://a/kite", "key-1", ttl=LONG_TTL)
        assert batches == [[f"{prefix}/kites/{kite.id}", f"{prefix}/kites{kite}"]]  # one round trip, id key first
        moved = make_kite(id=kite.id, hostname="worker-9")
        other.upsert(moved, "http://b/kite", "key-1", ttl=LONG_TTL)  # another writer moves it, unaware
        recorder.wait_for(lambda events: len(events) >= 4)
        ours._client.write_all = write_all
        again = make_kite(id=kite.id, hostname="worker-5")
        ours.upsert(again, "http://c/kite", "key-1", ttl=LONG_TTL)  # ours last wrote worker-1: in order
        recorder.wait_for(lambda events: len(events) >= 6)
        ours.upsert(kite, "http://a/kite", "key-1", ttl=LONG_TTL)  # the same: in order
        recorder.wait_for(lambda events: len(events) >= 9)
        assert [(e.action, e.kite.hostname) for e in recorder.events] == [
            (REGISTER, "worker-1"),
            (REGISTER, "worker-9"), (DEREGISTER, "worker-1"), (DEREGISTER, "worker-9"), (REGISTER, "worker-9"),
            (DEREGISTER, "worker-9"), (REGISTER, "worker-5"),
            (DEREGISTER, "worker-5"), (REGISTER, "worker-1"),
        ]
        assert [r.kite for r in ours.get({"username": "alice"})] == [kite]
        assert json.loads(raw.read(f"{prefix}/kites/{kite.id}").value)["kite"] == str(kite)


def test_v3_layout_and_leases(etcd_server: EtcdServer, prefix: str) -> None:
    raw = Etcd3Client(host="127.0.0.1", port=etcd_server.client_port)
    kite, other = make_kite(), make_kite(hostname="worker-2")
    with open_storage(f"etcd://127.0.0.1:{etcd_server.client_port}{prefix}") as storage:
        storage.upsert(kite, "http://a/kite", "key-1", ttl=LONG_TTL)
        storage.upsert(other, "http://b/kite", "key-1", ttl=LONG_TTL)
        [(value, meta)] = raw.get(f"{prefix}/kites/alice/production/math/1.0.0/eu-west/worker-1/{kite.id}", True)
        assert json.loads(value) == {"url": "http://a/kite", "key_id": "key-1"}
        [(index, index_meta)] = raw.get(f"{prefix}/kite-ids/{kite.id}", True)
        assert json.loads(index) == {"kite": str(kite), "url": "http://a/kite", "key_id": "key-1", "ttl": LONG_TTL,
                                     "shared": True}
        lease = meta["lease"]
        [(_, other_meta)] = raw.get(f"{prefix}/kite-ids/{other.id}", True)
        assert index_meta["lease"] == other_meta["lease"] == lease  # one lease for the instance's kites of a TTL
        attached = raw.post(raw.get_url("/kv/lease/timetolive"), json={"ID": int(lease), "keys": True})["keys"]
        assert len(attached) == 4  # both keys of both kites

        # A refresh of our own kite sends nothing: no write, same lease.
        assert storage.refresh(kite, LONG_TTL) is True
        [(_, after)] = raw.get(f"{prefix}/kite-ids/{kite.id}", True)
        assert (after["lease"], after["mod_revision"]) == (lease, index_meta["mod_revision"])

        # Deleting a kite leaves the shared lease (and the other kite) alone.
        storage.delete(kite)
        assert raw.get(f"{prefix}/kite-ids/{kite.id}") == []
        result = raw.post(raw.get_url("/kv/lease/timetolive"), json={"ID": int(lease)})
        assert int(result["TTL"]) > 0 and storage.get_by_id(other.id) is not None
