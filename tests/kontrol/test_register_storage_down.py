"""A registration while the storage cannot be read: a clear ``internal error`` answer, over the kite
connection and over HTTP -- never the storage's own message (the addresses of etcd members) nor a 500
traceback. Found by the fault suite's soak (etcd without quorum once the key pair cache expired)."""

from __future__ import annotations

import pytest
import requests

from kite import KiteError
from kontrol.storage import StorageUnavailableError

from .conftest import make_kite, start_kontrol

STORAGE_TEXT = "etcd at http://10.0.0.7:2379 timed out"


def _storage_down(*_args, **_kwargs):
    raise StorageUnavailableError(f"{STORAGE_TEXT}: timed out")


@pytest.fixture
def kontrol():
    k = start_kontrol("memory")
    yield k
    k.close()


def test_websocket_register_says_internal_error(kontrol, monkeypatch):
    kite = make_kite(kontrol, "alice")
    try:
        monkeypatch.setattr(kontrol.keypairs, "by_public", _storage_down)
        with pytest.raises(KiteError) as refused:
            kite.register(kite.url)
        assert "internal error" in refused.value.message and STORAGE_TEXT not in refused.value.message
    finally:
        kite.close()


def test_http_register_says_internal_error(kontrol, monkeypatch):
    key = kontrol.register_user("alice")
    monkeypatch.setattr(kontrol.keypairs, "by_public", _storage_down)
    body = {"url": "http://127.0.0.1:9/kite", "auth": {"type": "kiteKey", "key": key},
            "kite": {"username": "alice", "environment": "prod", "name": "math", "version": "1.0.0",
                     "region": "eu", "hostname": "h", "id": "5a0c2f5e-0000-4000-8000-000000000001"}}
    answer = requests.post(kontrol.kite.url.removesuffix("/kite") + "/register", json=body, timeout=5)
    assert answer.status_code in (401, 500), answer.text
    assert answer.json()["err"].startswith("internal error") and STORAGE_TEXT not in answer.text
