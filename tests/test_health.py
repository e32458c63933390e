"""``/healthz`` and ``/readyz`` (kite.health) of real kites and of a real Kontrol, on 127.0.0.1."""

from __future__ import annotations

import gevent
import pytest
import requests
from gevent.event import Event

from kite import Kite
from kontrol.storage import open_storage
from tests.gunicorn_app import make_math_kite
from tests.kontrol.conftest import EtcdServer, make_kite, start_kontrol
from tests.serving import serve_kite

#: Seconds for one probe: more than a readiness check may take (kite.health.CHECK_TIMEOUT).
PROBE_TIMEOUT = 10


def probe(k: Kite, path: str) -> tuple[int, dict]:
    response = requests.get(k.url.removesuffix("/kite") + path, timeout=PROBE_TIMEOUT)
    assert response.headers["Content-Type"] == "application/json"
    return response.status_code, response.json()


@pytest.fixture
def served():
    k = serve_kite(make_math_kite())
    yield k
    k.close()


def test_healthz_says_the_process_serves(served):
    status, body = probe(served, "/healthz")
    assert status == 200
    assert body["status"] == "ok"
    assert body["kite"] == {"name": "math", "version": "1.0.0", "id": served.id}
    assert body["uptime_seconds"] >= 0
    assert requests.head(served.url.removesuffix("/kite") + "/healthz", timeout=5).status_code == 200
    assert requests.post(served.url.removesuffix("/kite") + "/healthz", timeout=5).status_code == 405


def test_readyz_without_registration_and_with_own_checks(served):
    status, body = probe(served, "/readyz")
    assert (status, body["status"]) == (200, "ready")
    assert body["checks"] == {"serving": {"ok": True}, "kontrol": {"ok": True}}
    served.health.add_check("database", lambda: "no connection yet")
    served.health.add_check("cache", lambda: 1 / 0)
    status, body = probe(served, "/readyz")
    assert (status, body["status"]) == (503, "not ready")
    assert body["checks"]["database"] == {"ok": False, "reason": "no connection yet"}
    assert body["checks"]["cache"]["reason"].startswith("ZeroDivisionError")
    served.health.remove_check("database")
    served.health.remove_check("cache")
    assert probe(served, "/readyz")[0] == 200


def test_readyz_waits_for_the_registration_with_kontrol():
    kontrol = start_kontrol(open_storage("memory"))
    gate = Event()  # Kontrol answers `register` once the test has seen the kite not ready
    kontrol.kite._methods["register"].pre_handle_func(lambda r: gate.wait(10))
    k = make_kite(kontrol, "alice")
    try:
        assert probe(k, "/readyz")[0] == 200  # not registering: nothing to wait for
        registering = gevent.spawn(k.register_forever, k.url)
        with gevent.Timeout(5):
            while not k.health.expects_registration:
                gevent.sleep(0.01)
        status, body = probe(k, "/readyz")
        assert (status, body["checks"]["kontrol"]) == (503, {"ok": False, "reason": "not registered with Kontrol yet"})
        gate.set()
        registering.get(timeout=10)
        status, body = probe(k, "/readyz")
        assert (status, body["status"]) == (200, "ready")
    finally:
        gate.set()
        k.close()
        kontrol.close()


def test_kontrol_readyz_fails_when_its_storage_is_unreachable(tmp_path):
    etcd = EtcdServer(tmp_path / "etcd")
    etcd.start()
    kontrol = None
    try:
        kontrol = start_kontrol(open_storage(f"etcd://127.0.0.1:{etcd.client_port}"))
        status, body = probe(kontrol.kite, "/readyz")
        assert (status, body["checks"]["storage"]) == (200, {"ok": True})
        etcd.stop()
        status, body = probe(kontrol.kite, "/readyz")
        assert status == 503
        assert body["checks"]["storage"]["ok"] is False and body["checks"]["storage"]["reason"]
        assert probe(kontrol.kite, "/healthz")[0] == 200  # alive all the same
        etcd.start()
        with gevent.Timeout(10):
            while probe(kontrol.kite, "/readyz")[0] != 200:
                gevent.sleep(0.1)
    finally:
        if kontrol is not None:
            kontrol.close()
        etcd.stop()


def test_closed_kite_is_neither_healthy_nor_ready(served):
    served.health.kite._closed.set()  # as close() does, with the server still answering
    assert probe(served, "/healthz")[0] == 503
    status, body = probe(served, "/readyz")
    assert (status, body["checks"]["serving"]) == (503, {"ok": False, "reason": "the kite is closed"})
