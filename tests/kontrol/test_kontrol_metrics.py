"""Kontrol's metrics (kontrol.metrics): a real Kontrol on sqlite, real kites registering, looking up, watching."""

from __future__ import annotations

import gevent
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from kite import Config
from kite.wire.protocol import KontrolQuery
from kontrol import Kontrol
from kontrol.storage import InvalidQueryError, open_storage

from .conftest import FAST, make_kite, wait_until


def scrape(kontrol: Kontrol) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(kontrol.kite.url.removesuffix("/kite") + "/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


@pytest.fixture
def kontrol(tmp_path):
    config = Config()
    config.username, config.ip, config.port = "koding", "127.0.0.1", 0
    config.metrics = True  # as KITE_METRICS=1 does for `kontrol`
    k = Kontrol(config, open_storage(f"sqlite:///{tmp_path / 'kontrol.db'}"), **FAST)
    gevent.spawn(k.run)
    assert k.kite.server_ready_notify().wait(5)
    yield k
    k.close()


def test_kontrol_metrics_after_registering_finding_and_watching(kontrol):
    assert kontrol.enable_metrics() is kontrol.kite.metrics  # on already (config.metrics); idempotent
    math = make_kite(kontrol, "alice")
    bob = make_kite(kontrol, "bob", "client", serve=False)
    try:
        math.register_forever(math.url)
        (found,) = bob.get_kites(KontrolQuery(username="alice", environment="prod", name="math"))
        found.close()
        assert bob.get_token(math.kite())
        events = []
        watcher = bob.watch_kites(KontrolQuery(username="alice", environment="prod", name="math"), events.append)
        base = kontrol.kite.url.removesuffix("/kite")
        assert requests.get(f"{base}/heartbeat?id=nobody", timeout=5).text == "registeragain"
        assert requests.get(f"{base}/heartbeat?id={math.id}", timeout=5).text == "pong"
        with pytest.raises(InvalidQueryError):
            kontrol.storage.get(KontrolQuery())  # no username: an invalid query, a failed storage call

        samples = scrape(kontrol)
        for method, calls in (("register", 1), ("getKites", 2), ("getToken", 1)):  # getKites: lookup and watch
            assert value(samples, "kite_calls_total", method=method) == calls, method
            assert value(samples, "kite_call_duration_seconds_count", method=method) == calls, method
        assert value(samples, "kontrol_registered_kites", backend="sqlite", kind="websocket") == 1
        assert value(samples, "kontrol_registered_kites", backend="sqlite", kind="self") == 1
        assert value(samples, "kontrol_heartbeats_total", result="registeragain") == 1
        assert value(samples, "kontrol_heartbeats_total", result="pong") >= 1  # and kite.heartbeat pings
        assert value(samples, "kontrol_http_request_duration_seconds_count", endpoint="/heartbeat") == 2
        assert value(samples, "kontrol_storage_operation_duration_seconds_count", backend="sqlite",
                     operation="upsert") >= 2  # Kontrol itself, then math
        assert value(samples, "kontrol_storage_operation_failures_total", backend="sqlite", operation="get",
                     error="InvalidQueryError") == 1
        assert value(samples, "kontrol_watchers") == 1
        assert value(samples, "kontrol_refresh_lag_seconds") >= 0
        assert ("kontrol_refresh_lag_seconds", frozenset()) in samples

        watcher.cancel()
        math.close()
        wait_until(lambda: value(scrape(kontrol), "kontrol_watchers") == 0)
        wait_until(lambda: value(scrape(kontrol), "kontrol_registered_kites", backend="sqlite",
                                 kind="websocket") == 0)
    finally:
        math.close()
        bob.close()
