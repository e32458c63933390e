"""Prometheus metrics (kite.metrics): scraped from ``/metrics`` of real kites on 127.0.0.1 after real calls."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import gevent
import pytest
import requests
from gevent.event import Event
from prometheus_client.parser import text_string_to_metric_families

from kite import Config, Kite, KiteError, testutil
from kite.kontrolclient.tokenrenewer import TokenRenewer
from kite.metrics import DISABLED, LATENCY_BUCKETS, SYNC_INTERVAL, UNKNOWN_METHOD, KiteMetrics
from tests.gunicorn_app import make_math_kite
from tests.serving import serve_kite
from tests.test_gunicorn import (
    GUNICORN,
    STARTUP_TIMEOUT,
    _child_subreaper,
    _control_socket_args,
    free_port,
    stop_gunicorn,
)

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a served XHR session outlives its last poll (a closing XHR client tells the server nothing).
XHR_DISCONNECT_DELAY = 0.5
#: Seconds a gauge may take to follow a connection closing on the other side.
SETTLE_TIMEOUT = 5.0


def scrape(k: Kite) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``k``'s ``/metrics`` by (name, labels)."""
    response = requests.get(k.url.removesuffix("/kite") + "/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def wait_for(k: Kite, name: str, expected: float, **labels: str) -> None:
    """Scrape until ``name{labels}`` is ``expected`` (a connection closes asynchronously)."""
    with gevent.Timeout(SETTLE_TIMEOUT, AssertionError(f"{name}{labels} never became {expected}")):
        while value(scrape(k), name, **labels) != expected:
            gevent.sleep(0.02)


@pytest.fixture
def server():
    k = make_math_kite()
    k.config.disconnect_delay = k.config.heartbeat_interval = XHR_DISCONNECT_DELAY  # a held poll ends at a beat
    k.enable_metrics()
    serve_kite(k)
    yield k
    k.close()


@pytest.fixture
def caller():
    local = Kite("caller", "1.0.0")
    yield local
    local.close()


def test_calls_errors_and_latency_by_method(server, caller):
    c = caller.new_client(server.url)
    c.dial()
    for i in range(3):
        assert c.tell("square", i) == i * i
    for _ in range(2):
        with pytest.raises(KiteError) as failed:
            c.tell("fail")
        assert failed.value.type == "genericError"
    with pytest.raises(KiteError) as missing:
        c.tell("no.such.method")
    assert missing.value.type == "methodNotFound"
    c.close()

    samples = scrape(server)
    assert value(samples, "kite_calls_total", method="square") == 3
    assert value(samples, "kite_calls_total", method="fail") == 2
    assert value(samples, "kite_calls_total", method=UNKNOWN_METHOD) == 1
    assert value(samples, "kite_call_errors_total", method="fail", type="genericError") == 2
    assert value(samples, "kite_call_errors_total", method=UNKNOWN_METHOD, type="methodNotFound") == 1
    assert ("kite_call_errors_total", frozenset({("method", "square"), ("type", "genericError")})) not in samples
    assert value(samples, "kite_call_duration_seconds_count", method="square") == 3
    assert value(samples, "kite_call_duration_seconds_bucket", method="square", le="+Inf") == 3
    assert 0 < value(samples, "kite_call_duration_seconds_sum", method="square") < 1
    buckets = [value(samples, "kite_call_duration_seconds_bucket", method="square", le=repr(bound))
               for bound in LATENCY_BUCKETS]
    assert buckets == sorted(buckets) and buckets[-1] == 3  # cumulative, every call under 10 s


def test_connections_by_transport_go_up_and_down(server, caller):
    for transport, label in (("websocket", "websocket"), ("xhr_polling", "xhr")):
        c = caller.new_client(server.url, transport=transport)
        c.dial()
        assert c.tell("square", 2) == 4
        wait_for(server, "kite_connections", 1, side="served", transport=label)
        c.close()
        wait_for(server, "kite_connections", 0, side="served", transport=label)
    raw = caller.new_client(server.url.replace("http://", "ws://") + "/websocket")
    raw.dial()
    wait_for(server, "kite_connections", 1, side="served", transport="raw_websocket")
    raw.close()
    wait_for(server, "kite_connections", 0, side="served", transport="raw_websocket")


def test_bytes_in_and_out_grow(server, caller):
    before = scrape(server)
    c = caller.new_client(server.url)
    c.dial()
    c.tell("echo", "x" * 1000)
    after = scrape(server)
    c.close()
    assert value(after, "kite_received_bytes_total") - value(before, "kite_received_bytes_total") > 1000
    assert value(after, "kite_sent_bytes_total") - value(before, "kite_sent_bytes_total") > 1000


def test_pending_outgoing_and_queued_incoming_calls(caller):
    release = Event()
    slow = Kite("slow", "1.0.0")
    slow.config.ip, slow.config.disable_authentication = "127.0.0.1", True
    slow.config.max_concurrent_calls = 1  # one call runs, the others queue
    slow.handle_func("wait", lambda r: release.wait(10))
    slow.enable_metrics()
    caller.enable_metrics()
    serve_kite(slow)
    caller.config.ip = "127.0.0.1"
    serve_kite(caller)  # served, so that its /metrics answers
    try:
        c = caller.new_client(slow.url)
        c.dial()
        results = [c.go("wait") for _ in range(3)]
        wait_for(caller, "kite_pending_calls", 3)
        wait_for(caller, "kite_connections", 1, side="dialed", transport="websocket")
        wait_for(slow, "kite_running_calls", 1)
        wait_for(slow, "kite_queued_calls", 2)
        release.set()
        assert [r.get(timeout=5) for r in results] == [True, True, True]
        wait_for(caller, "kite_pending_calls", 0)
        wait_for(slow, "kite_queued_calls", 0)
        c.close()
    finally:
        release.set()
        slow.close()


def test_reconnects_and_token_renewals(server, caller):
    caller.enable_metrics()
    caller.config.ip = "127.0.0.1"
    serve_kite(caller)
    c = caller.new_client(server.url)
    c.dial_forever().wait(5)
    server.close_sessions()  # the client redials
    with gevent.Timeout(SETTLE_TIMEOUT):
        while value(scrape(caller), "kite_reconnects_total") != 1:
            gevent.sleep(0.05)
    assert c.tell("square", 3) == 9

    renewer = TokenRenewer(c, testutil.token_source())
    renewer.renew()
    renewer.renew()
    renewer.token_source = lambda client: ""
    with pytest.raises(ValueError):
        renewer.renew()
    samples = scrape(caller)
    assert value(samples, "kite_token_renewals_total", result="ok") == 2
    assert value(samples, "kite_token_renewals_total", result="error") == 1
    c.close()


def test_several_kites_in_one_process_keep_their_own_metrics(server, caller):
    other = make_math_kite("other")
    other.enable_metrics()
    serve_kite(other)
    try:
        c = caller.new_client(server.url)
        c.dial()
        c.tell("square", 1)
        c.close()
        assert value(scrape(server), "kite_calls_total", method="square") == 1
        assert value(scrape(other), "kite_calls_total", method="square") == 0
        assert server.metrics.registry is not other.metrics.registry
        assert other.enable_metrics() is other.metrics  # idempotent
    finally:
        other.close()


def test_disabled_by_default_no_route_and_no_prometheus_import():
    """In a fresh process: a kite serving calls without metrics never imports prometheus_client."""
    script = textwrap.dedent("""
        import sys
        from gevent import monkey; monkey.patch_all()
        import requests
        from tests.gunicorn_app import make_math_kite
        from tests.serving import serve_kite
        from kite import Kite
        from kite.metrics import DISABLED
        k = serve_kite(make_math_kite())
        c = Kite("c", "1.0.0").new_client(k.url); c.dial()
        assert c.tell("square", 2) == 4
        assert k.metrics is DISABLED
        base = k.url.removesuffix("/kite")
        assert requests.get(base + "/metrics").status_code == 404
        assert requests.get(base + "/healthz").status_code == 200
        assert "prometheus_client" not in sys.modules, "imported"
        print("OK")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert run.stdout.strip() == "OK", run.stderr


def test_enable_without_prometheus_client_names_the_extra():
    script = textwrap.dedent("""
        import sys
        sys.modules["prometheus_client"] = None  # as if not installed
        from kite import Kite
        from kite.metrics import MetricsNotInstalledError
        try:
            Kite("k", "1.0.0").enable_metrics()
        except MetricsNotInstalledError as exc:
            print(exc)
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert "pip install kite[metrics]" in run.stdout, run.stderr


def test_config_switch(monkeypatch):
    assert Kite("off", "1.0.0").metrics is DISABLED
    monkeypatch.setenv("KITE_METRICS", "1")
    k = Kite("on", "1.0.0")
    assert isinstance(k.metrics, KiteMetrics)
    k.close()
    monkeypatch.setenv("KITE_METRICS", "maybe")
    with pytest.raises(ValueError, match="KITE_METRICS"):
        Config.get(kite_key_required=False)


# -- gunicorn with two workers: prometheus_client's multiprocess mode ------------------------------

#: Connections opened at once, so that both gunicorn workers get some (they race to accept).
GUNICORN_CONNECTIONS = 16
#: Seconds one worker is kept busy while the second half of the connections is opened.
WORKER_BUSY_SECONDS = 1.0


@pytest.fixture
def gunicorn_metrics(tmp_path):
    """gunicorn with 2 workers of tests/gunicorn_metrics_app.py, PROMETHEUS_MULTIPROC_DIR set and the
    child_exit hook configured; yields (base URL, master process); always stops every process."""
    port = free_port()
    multiproc = tmp_path / "prometheus"
    multiproc.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(multiproc)}
    cmd = [str(GUNICORN), "-k", "kite.server.GeventKiteWorker", "--graceful-timeout", "2", "-w", "2",
           "-c", "tests/gunicorn_metrics_conf.py", *_control_socket_args(), "-b", f"127.0.0.1:{port}",
           "tests.gunicorn_metrics_app:app"]
    log = tempfile.TemporaryFile()
    with _child_subreaper():
        proc = subprocess.Popen(cmd, cwd=str(ROOT), env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                start_new_session=True)
        try:
            base = f"http://127.0.0.1:{port}"
            with gevent.Timeout(STARTUP_TIMEOUT, AssertionError("gunicorn did not start")):
                while True:
                    assert proc.poll() is None, "gunicorn exited"
                    try:
                        if requests.get(base + "/healthz", timeout=2).status_code == 200:
                            break
                    except requests.RequestException:
                        pass
                    gevent.sleep(0.05)
            yield base, proc
        finally:
            stop_gunicorn(proc)
            log.close()


def scrape_url(base: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = requests.get(base + "/metrics", timeout=5).text
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_gunicorn_workers_add_up(gunicorn_metrics, caller):
    base, _master = gunicorn_metrics

    def dial(count: int) -> list:
        opened = [caller.new_client(base + "/kite") for _ in range(count)]
        for c in opened:
            c.dial_timeout(10)
        return opened

    clients = dial(GUNICORN_CONNECTIONS // 2)
    busy = clients[0].go("spin", WORKER_BUSY_SECONDS)  # that worker accepts nothing meanwhile
    gevent.sleep(0.1)
    clients += dial(GUNICORN_CONNECTIONS - len(clients))
    busy.get(timeout=10)
    by_pid: dict[int, list] = {}
    for c in clients:
        by_pid.setdefault(c.tell("pid"), []).append(c)
    assert len(by_pid) == 2, f"every connection went to one worker: {list(by_pid)}"

    gevent.sleep(SYNC_INTERVAL * 2.5)  # every worker has written its gauges
    samples = scrape_url(base)
    assert value(samples, "kite_calls_total", method="pid") == GUNICORN_CONNECTIONS  # both workers' calls
    assert value(samples, "kite_connections", side="served", transport="websocket") == GUNICORN_CONNECTIONS
    assert value(samples, "kite_received_bytes_total") > 0

    # A worker killed: gunicorn's child_exit hook drops its live gauges (mark_process_dead); counters stay.
    dead_pid, dead_clients = next(iter(by_pid.items()))
    os.kill(dead_pid, signal.SIGKILL)
    left = GUNICORN_CONNECTIONS - len(dead_clients)
    with gevent.Timeout(15, AssertionError("the dead worker's connections still count")):
        while True:
            gevent.sleep(SYNC_INTERVAL)
            try:
                samples = scrape_url(base)
            except requests.RequestException:
                continue
            if value(samples, "kite_connections", side="served", transport="websocket") == left:
                break
    assert value(samples, "kite_calls_total", method="pid") == GUNICORN_CONNECTIONS
    for c in clients:
        c.close()
