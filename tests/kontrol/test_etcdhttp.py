"""The etcd v3 gateway client on http.client (kontrol.storage.etcdhttp), against a real etcd and
against ``requests`` (the library it replaced) on the same calls."""

from __future__ import annotations

import base64
import os
import socket
import threading

import gevent
import pytest
import requests

from kontrol.storage.etcdhttp import EtcdHttp, EtcdHttpError


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


@pytest.fixture
def client(etcd_server):
    c = EtcdHttp("127.0.0.1", etcd_server.client_port, pool_size=3, timeout=2.0)
    yield c
    c.close()


def test_answers_equal_those_requests_gets(client, etcd_server):
    key = f"/etcdhttp-{os.urandom(3).hex()}/k"
    put = {"key": b64(key), "value": b64("v1")}
    client.post("/kv/put", put)
    via_requests = requests.post(f"{etcd_server.url}/v3/kv/range", json={"key": b64(key)}, timeout=5).json()
    ours = client.post("/kv/range", {"key": b64(key)})
    assert ours == via_requests and base64.b64decode(ours["kvs"][0]["value"]) == b"v1"
    txn = {"compare": [{"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64("nope")}],
           "success": [], "failure": [{"request_range": {"key": b64(key)}}]}
    assert not client.post("/kv/txn", txn).get("succeeded")  # false is left out, as every zero value


def test_http_errors_carry_etcds_message(client):
    with pytest.raises(EtcdHttpError) as err:
        client.post("/lease/keepalive", {"ID": "not-a-number"})
    assert err.value.status == 500 and "invalid character" in err.value.text
    with pytest.raises(EtcdHttpError) as err:
        client.post("/kv/lease/revoke", {"ID": 123456789})  # no such lease
    assert "lease not found" in err.value.text


def test_never_more_connections_than_the_pool(client, etcd_server):
    peers: set = set()
    original = client._connect

    def counting():
        conn = original()
        peers.add(id(conn))
        return conn

    client._connect = counting
    jobs = [gevent.spawn(client.post, "/kv/range", {"key": b64("/x"), "count_only": True}) for _ in range(50)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert 1 <= len(peers) <= 3 and len(client._idle) == len(peers)


def test_a_restarted_etcd_is_reached_again_on_a_fresh_connection(client, etcd_server):
    client.post("/kv/range", {"key": b64("/x"), "count_only": True})  # leaves an idle connection
    etcd_server.stop()
    with pytest.raises(OSError):
        client.post("/kv/range", {"key": b64("/x"), "count_only": True})
    etcd_server.start()
    assert "header" in client.post("/kv/range", {"key": b64("/x"), "count_only": True})


def test_a_silent_server_times_out():
    """A peer that accepts and never answers: TimeoutError after ``timeout``, not a hang."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list = []
    accepting = threading.Thread(target=lambda: held.append(listener.accept()), daemon=True)
    accepting.start()
    c = EtcdHttp("127.0.0.1", listener.getsockname()[1], timeout=0.3)
    try:
        with gevent.Timeout(5):
            with pytest.raises(TimeoutError):
                c.post("/kv/range", {"key": b64("/x")})
    finally:
        c.close()
        listener.close()
