"""Group commit for etcd v3 (kontrol.storage.txnbatch) against a real etcd: concurrent transactions
share requests, each writer gets its own answer, one refused write fails only itself."""

from __future__ import annotations

import base64
import os

import gevent
import pytest

from kite.wire.protocol import KiteIdentity
from kontrol.storage import StorageError
from kontrol.storage import etcd3_wire as wire
from kontrol.storage.etcd import EtcdStorage
from kontrol.storage.txnbatch import TxnBatcher

from .conftest import wait_until


@pytest.fixture
def storage(etcd_server):
    s = EtcdStorage("127.0.0.1", etcd_server.client_port, f"/batch-{os.urandom(4).hex()}")
    yield s
    s.close()


def kite(i: int) -> KiteIdentity:
    return KiteIdentity("math", "alice", f"id-{i}", "prod", "eu", "1.0.0", "h")


def test_concurrent_upserts_share_requests_and_all_land(storage):
    jobs = [gevent.spawn(storage.upsert, kite(i), f"http://10.0.0.1:{i}/kite", "", 30) for i in range(200)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    batcher = storage.batcher
    assert batcher.transactions == 200 and batcher.requests < 100, (batcher.requests, batcher.transactions)
    direct = EtcdStorage(storage._http.host, storage._http.port, storage._kites.rsplit("/kites/", 1)[0],
                         replica=False)
    try:
        assert direct.count() == 200
        assert all(direct.get_by_id(f"id-{i}").url == f"http://10.0.0.1:{i}/kite" for i in range(200))
    finally:
        direct.close()


def test_writes_of_one_kite_are_never_in_one_batch_and_the_last_one_wins(storage):
    urls = [f"http://10.0.0.2:{i}/kite" for i in range(30)]
    jobs = [gevent.spawn(storage.upsert, kite(1), url, "", 30) for url in urls]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert storage.get_by_id("id-1").url in urls and storage._index("id-1").record.url == storage.get_by_id("id-1").url


def test_a_refused_transaction_fails_alone(storage):
    batcher = TxnBatcher(storage._post)

    def put(key: str, lease: int = 0) -> dict:
        return batcher.txn([wire.absent(key)], [wire.put(key, "v", lease)], [])

    prefix = storage._kites + "refused/"
    jobs = [gevent.spawn(put, f"{prefix}{i}") for i in range(10)]
    bad = gevent.spawn(put, f"{prefix}bad", lease=0x7FFF_FFFF_0001)  # no such lease: etcd refuses this one
    gevent.joinall([*jobs, bad], timeout=10)
    assert all(j.value["succeeded"] for j in jobs)
    assert isinstance(bad.exception, StorageError) and "lease not found" in str(bad.exception)
    kvs = storage._range_all(prefix)[1]
    assert sorted(base64.b64decode(kv["key"]).decode().rsplit("/", 1)[1] for kv in kvs) == [str(i) for i in range(10)]


def count_alone(storage: EtcdStorage) -> list:
    """The transactions ``storage`` sends on their own from now on (not through its batcher)."""
    alone: list = []
    txn = storage._txn
    storage._txn = lambda *args: alone.append(args) or txn(*args)
    return alone


def test_a_wave_of_re_registrations_shares_requests_too(storage):
    """Re-registering stored kites is guarded by what this instance knows of them (its own last write,
    or its replica), so it joins the combined transactions as a new kite does: no guard fails, nothing
    is retried alone, and the new kites in the same batches land too."""
    for i in range(100):
        storage.upsert(kite(i), f"http://10.0.0.3:{i}/kite", "", 30)
    alone = count_alone(storage)
    before_requests, before_txns = storage.batcher.requests, storage.batcher.transactions
    jobs = [gevent.spawn(storage.upsert, kite(i), f"http://10.0.0.4:{i}/kite", "", 30) for i in range(200)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    requests = storage.batcher.requests - before_requests
    transactions = storage.batcher.transactions - before_txns
    assert (transactions, len(alone)) == (200, 0) and requests < 100, (requests, transactions, len(alone))
    assert all(storage.get_by_id(f"id-{i}").url == f"http://10.0.0.4:{i}/kite" for i in range(200))
    # Another instance's view: the replica's, guarded by the revision it saw.
    other = EtcdStorage(storage._http.host, storage._http.port, storage._kites.rsplit("/kites/", 1)[0])
    try:
        assert other.count() == 200
        wait_until(lambda: len(other.replica) == 200)  # its view of them: the replica's first listing
        alone = count_alone(other)
        jobs = [gevent.spawn(other.upsert, kite(i), f"http://10.0.0.5:{i}/kite", "", 30) for i in range(200)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        assert (other.batcher.transactions, len(alone)) == (200, 0) and other.batcher.requests < 100
        assert all(storage._index(f"id-{i}").record.url == f"http://10.0.0.5:{i}/kite" for i in range(200))
    finally:
        other.close()


def test_a_wrong_guard_sends_only_its_own_writer_alone(storage):
    """An instance without a replica does not know kites another one stored: its first tries of those
    expect them absent and fail their combined transactions; only those writers retry alone, the others
    (new kites, whose guards held) join the next combined transaction."""
    prefix = storage._kites.rsplit("/kites/", 1)[0]
    blind = EtcdStorage(storage._http.host, storage._http.port, prefix, replica=False)
    try:
        for i in range(10):
            storage.upsert(kite(i), f"http://10.0.0.6:{i}/kite", "", 30)
        alone = count_alone(blind)
        jobs = [gevent.spawn(blind.upsert, kite(i), f"http://10.0.0.7:{i}/kite", "", 30) for i in range(200)]
        gevent.joinall(jobs, timeout=30, raise_error=True)
        assert len(alone) <= 10, len(alone)
        assert all(blind._index(f"id-{i}").record.url == f"http://10.0.0.7:{i}/kite" for i in range(200))
    finally:
        blind.close()
