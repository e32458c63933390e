"""Load faults (issue 13): one peer floods a kite, and 500 reconnecting clients storm a restarted kite.

As in :mod:`tests.faults.test_connections`, the kite (``tests.faults.fault_kite``) and the
clients (``tests.faults.loadgen``) are processes of their own on 127.0.0.1, and every loadgen
report is checked by :func:`~tests.faults.conftest.assert_accounting`. A bystander loadgen's p99
latency is measured before and during each fault and printed.
"""

from __future__ import annotations

import os
import signal
import time

import gevent
import pytest

from kite import Kite, KiteError
from kite.connection import DEFAULT_MAX_CONCURRENT_CALLS, MAX_QUEUED_CALLS
from kite.transport.session import BACKLOG_CLOSE_CODE, BACKLOG_CLOSE_REASON
from tests.kontrol.conftest import free_port

from .conftest import CALL_TIMEOUT, assert_accounting, assert_latency_kept, figures, raw_websocket_url

#: The kite's send-queue cap in the flood test (characters): the unread flooder overflows it fast.
MAX_BACKLOG = 4 * 1024 * 1024
#: ``blob`` calls the unread flooder sends per write, and ``nap`` calls the burst client starts at once.
FLOOD_PER_WRITE = 64
BURST = 5000
#: Seconds the flooders wait after the bystander's calm window (their own start-up settles).
FLOOD_START_DELAY = 1.0
#: Seconds within which the kite drops the peer that never reads its answers (its queue overflows).
FLOOD_DROP_BOUND = 10.0
#: The reconnect storm: clients per process, processes, and the back-off cap they use (seconds).
STORM_CLIENTS = 100
STORM_PROCESSES = 5
STORM_BACKOFF_CAP = 2.0
#: Seconds within which all of them are back once the kite serves again: the longest jittered
#: back-off wait (cap x 1.5) plus the handshakes of 500 clients on two loaded cores.
STORM_RECOVERY_BOUND = STORM_BACKOFF_CAP * 1.5 + 12.0
#: A probe's calls while the storm reconnects must stay below this (ms): the kite keeps answering.
STORM_PROBE_MAX_MS = 3000.0


#: Seconds per loadgen figures window (its default).
WINDOW = 0.5


def p99s(windows: list[dict], start: float, end: float) -> list[float]:
    return [w["p99_ms"] for w in windows if start < w["t"] <= end and w["calls"]]


def assert_kept_latency(label: str, windows: list[dict], calm_start: float, fault_start: float,
                        fault_end: float) -> tuple[float, float]:
    """The bystander's p99 during the fault is within the bound of its p99 before (no process starting)."""
    before = p99s(windows, calm_start + WINDOW, fault_start)
    during = p99s(windows, fault_start, fault_end)
    assert_latency_kept(label, before, during)
    assert all(w["errors"] == {} for w in windows), (label, windows)
    return max(before), max(during)


def test_flooding_peers_keep_their_limits_and_others_their_latency(processes, soak_seconds):
    """A peer floods ``blob`` calls and never reads the answers; another starts 5000 ``nap`` calls
    at once, again and again. The unread one is dropped when its queue overflows, the other never
    runs more than ``max_concurrent_calls`` at once nor queues more than :data:`MAX_QUEUED_CALLS`,
    and a bystander's calls keep their latency."""
    (_, url), = processes.kites(1, "--max-backlog", str(MAX_BACKLOG))
    bystander = processes.loadgen(url, "websocket", False, "--clients", "4", "--interval", "0.002")
    # The flooders start (and connect) first, and begin after the bystander's calm window.
    delay = str(soak_seconds + FLOOD_START_DELAY)
    unread = processes.loadgen(raw_websocket_url(url), "websocket", False, "--flood-unread", str(FLOOD_PER_WRITE),
                               "--delay", delay, "--max-seconds", str(FLOOD_DROP_BOUND + 5))
    burst = processes.loadgen(url, "websocket", False, "--clients", "1", "--burst", str(BURST), "--delay", delay)
    readies = [gen.wait_event("ready") for gen in (bystander, unread, burst)]
    calm_start = max(event["t"] for event in readies)
    flood_start = min(event["t"] for event in readies[1:]) + float(delay)
    flood = unread.wait_event("report", timeout=float(delay) + FLOOD_DROP_BOUND + 15)
    gevent.sleep(max(0.0, flood_start + soak_seconds - time.time()))
    flood_end = time.time()
    os.kill(burst.pid, signal.SIGTERM)
    burst_report = burst.wait_event("report", timeout=CALL_TIMEOUT + 10)
    with Kite("probe", "1.0.0").new_client(url) as control:
        stats = control.tell_with_timeout("stats", 5)
    os.kill(bystander.pid, signal.SIGTERM)
    assert_accounting("bystander", bystander.wait_event("report", timeout=CALL_TIMEOUT))
    assert_accounting("burst", burst_report)
    before, during = assert_kept_latency("bystander", bystander.events("window"), calm_start, flood_start, flood_end)
    figures("flood", bystander_p99_ms_before=before, bystander_p99_ms_during=during,
            unread_dropped_after_s=flood["flood_dropped_after"], unread_calls_sent=flood["flood_sent"],
            burst_calls_ok=burst_report["outcomes"].get("ok", 0), max_running=stats["max_running_calls"],
            max_queued=stats["max_queued_calls"], session_ends=stats["session_ends"])
    assert flood["flood_dropped_after"] is not None and flood["flood_dropped_after"] <= FLOOD_DROP_BOUND, flood
    assert stats["session_ends"].get(f"{BACKLOG_CLOSE_CODE} {BACKLOG_CLOSE_REASON}") == 1, stats
    assert burst_report["outcomes"].get("ok", 0) >= BURST, burst_report
    assert 1 < stats["max_running_calls"] <= DEFAULT_MAX_CONCURRENT_CALLS, stats
    assert stats["max_queued_calls"] <= MAX_QUEUED_CALLS, stats


def test_reconnect_storm_after_a_restart(processes, soak_seconds):
    """500 clients (5 processes x 100, ``dial_forever``) on a kite that is killed and restarted on
    its port: their jittered back-off brings all of them back within the bound while the kite keeps
    answering a probe."""
    port = free_port()
    kite_proc, url = processes.kite("--port", str(port))
    storm = [processes.loadgen(url, "websocket", False, "--clients", str(STORM_CLIENTS), "--reconnect",
                               "--interval", "1.0", "--backoff-cap", str(STORM_BACKOFF_CAP))
             for _ in range(STORM_PROCESSES)]
    for gen in storm:
        gen.wait_event("ready", timeout=60)
    gevent.sleep(soak_seconds)
    os.kill(kite_proc.pid, signal.SIGKILL)
    kite_proc.proc.wait()
    restarted, url = processes.kite("--port", str(port))
    serving = time.time()
    probe_ms = []
    with Kite("probe", "1.0.0").new_client(url) as probe:
        def back() -> list:
            return [next((e for e in gen.events("all_connected") if e["t"] > serving), None) for gen in storm]

        while None in back() and time.time() - serving < STORM_RECOVERY_BOUND + 10:
            started = time.monotonic()
            try:
                probe.tell_with_timeout("echo", CALL_TIMEOUT, 1)
            except KiteError as e:  # what ended the probe's session, and what the kite logged
                session = probe._conn.session if probe._conn is not None else None
                ws = getattr(session, "_ws", None)
                closed = (ws.close_code, ws.close_reason) if ws is not None else None
                pytest.fail(f"probe call failed {time.time() - serving:.2f} s after the restart: {e!r}; its "
                            f"websocket closed with {closed}; kite output:\n{restarted.output[-3000:]}")
            probe_ms.append((time.monotonic() - started) * 1000)
            gevent.sleep(0.05)
    recovered = [event["t"] - serving if event else None for event in back()]
    gevent.sleep(soak_seconds)  # the 500 under load again
    for gen in storm:
        os.kill(gen.pid, signal.SIGTERM)
    reports = [gen.wait_event("report", timeout=CALL_TIMEOUT + 10) for gen in storm]
    figures("reconnect storm", clients=STORM_CLIENTS * STORM_PROCESSES, bound_s=STORM_RECOVERY_BOUND,
            all_back_after_s=round(max((r for r in recovered if r is not None), default=-1.0), 2),
            per_process_s=[round(r, 2) if r is not None else None for r in recovered],
            probe_max_ms=round(max(probe_ms, default=0.0), 1), probe_calls=len(probe_ms))
    assert None not in recovered and max(recovered) <= STORM_RECOVERY_BOUND, recovered
    assert probe_ms and max(probe_ms) <= STORM_PROBE_MAX_MS, probe_ms
    for i, report in enumerate(reports):
        assert_accounting(f"storm {i}", report)
        assert report["outcomes"].get("ok", 0) > 0, report
