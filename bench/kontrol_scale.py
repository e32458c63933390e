"""Kontrol at scale, today's code against a baseline commit side by side: sqlite, etcd v3, etcd2, postgres.

    .venv/bin/python bench/kontrol_scale.py [--baseline REF|none] [--storage sqlite,etcd,etcd2,postgres]
                                            [--rounds R] [--quick] [--kites N] [--seconds S] [--ws-kites N]
                                            [--workers N] [--pin split|none] [--py-spy DIR]

**Versions** (``kontrol_setup.py``). "current" is this working tree, uncommitted changes
included, its packages copied at the start (edits made while the bench runs do not reach
later rounds); "baseline" is ``--baseline REF`` (default ``8e8e5a0``, the commit issue 12
measured), checked out with ``git worktree add --detach``. Both live in temporary dirs,
removed at exit, on errors and on Ctrl-C. Only the Kontrol differs: each version's Kontrol
is this script's ``--serve`` in a process of its own, with ``cwd`` and ``PYTHONPATH`` its
tree and ``sys.path`` and the editable install's finder stripped of every other tree; its
READY line names the ``kontrol`` it imported and the ``kite``/``kontrol`` modules loaded
from outside its tree (none are allowed; checked again at the end of the run). ``--serve``
uses only what the baseline has too: ``Kontrol(config, storage, **registry timings)``, its
registry's entries (``next_refresh``; and ``_schedule`` where there is one) and storage, the
kite's Flask app. The clients -- the ``--worker`` processes and this process -- are "current"
for both versions.

**Storages.** sqlite: a new file per run (tmpfs). etcd (v3) and etcd2 (the v2 API, the Go
layout): one real etcd -- ``/usr/bin/etcd`` -- on free 127.0.0.1 ports with v2 enabled and
its data on tmpfs; a fresh key prefix per run, deleted after it. postgres: if this tree's
``open_storage`` takes ``postgres://`` URLs, a throwaway server from ``tests/kontrol/
conftest.py``'s ``PostgresServer`` (Debian's binaries, fsync off) and a fresh database per
run, dropped after it. A version whose ``open_storage`` does not know the storage is "n/a"
there (8e8e5a0 has no postgres backend); missing etcd or PostgreSQL binaries skip the
storage with a note.

**Rounds.** Per storage, ``--rounds`` (default 3; ``--quick`` 1) rounds of one run of each
version, the order swapped every round. A run: a fresh Kontrol with the registry's default
timings (heartbeat 10 s, update 60 s, key TTL 90 s; ``--quick``: 2 / 12 / 18 s, so that its
5x fewer kites make the same heartbeats/s and refreshes/s), then

1. **HTTP register**: two client processes (``--worker``, 16 keep-alive ``http.client``
   connections each, see :class:`KeepAlive`) ``POST /register`` N kites (default 10,000,
   ``--quick`` 2,000) of alice's, 100 per name; each heartbeats from its registration on
   (``GET /heartbeat``, evenly spread over the interval). A kite registers and heartbeats
   on one connection of its own, as a real kite does through its keep-alive HTTP client
   (so with ``--workers`` one worker serves all of a kite's requests); a connection sends
   the due heartbeats of its registered kites before its next registration.
2. **calls** on one kite connection (``kiteKey``) from this process while every kite
   heartbeats, after one untimed ``getKites`` per name (each signs the caller's token for
   its audience once; Kontrol caches it 48 h): ``getKites`` with 1 match (a random kite's 7
   fields), with 100 matches (``username/environment/name``) and ``getToken`` (a random
   kite's 7 fields, what token renewal asks), each with 1 and with 16 calls in flight on
   the connection, ~``--seconds`` each (default 2, ``--quick`` 0.8), sized by a short probe
   that also warms the row up. Every answer is checked.
3. **heartbeats during a refresh wave**: the registry refreshes a kite in its storage
   0.8-1.0 update intervals after writing it, so kites registered together come back 48-60 s
   later as one wave. The bench does not wait for it: ``POST /bench/refresh-wave`` makes
   every kite's refresh due within 0.2 update intervals (12 s) from now -- that wave, brought
   forward. Measured over it (at least one heartbeat interval, and until every kite of the
   wave was refreshed, at most 30 s past its end): heartbeats answered/s against the offered
   rate, their latency, refreshes failed or left undone, how late the refresher got.
4. **kites lost**: the storage's ``count()`` (without Kontrol's own entry, which today's
   Kontrol writes and the baseline's does not) and the registry must hold every registered
   kite; ``registeragain`` answers and errors of any kind are counted as well.
5. **websocket register** (``--ws-kites``, default 200, ``--quick`` 100; 0 skips): that many
   :class:`kite.Kite` s call ``register`` over their own connection, 32 at a time, then
   close; Kontrol must delete them again.

**Output**: one table per storage -- per row the current and the baseline median over the
rounds, the ratio current / baseline (median of the per-round ratios, and their min-max),
p50 / p99 latency, the Kontrol's CPU -- the checks under it, and the machine line with the
load average (other processes on the machine move the absolute figures). The exit status
is 1 when a kite was lost in any version or a run failed.

**All cores** (``--workers N``, default one per CPU; 0 or 1 skips them): a third version,
"workers", is today's code as N Kontrol processes on one port, as ``kontrol --workers N``
runs them (``SO_REUSEPORT``, one kite id, the key pair made once before they fork), on the
shared storages (etcd, etcd2, postgres; sqlite runs one process). Each worker serves the
bench routes on a control port of its own too; the bench sums their counters, unites their
registries and meters their CPU together. Its columns: its medians and workers / current.

Pinning (``--pin split``, default): the one-process Kontrols on the first CPU, the clients
and this process on the second, the workers, etcd and PostgreSQL on every CPU. ``--py-spy
DIR`` records the Kontrol (the first worker) in each phase (collapsed stacks). Progress on
stderr. On the 2-core machine it was written on, the default run takes ~25 minutes when the
machine is otherwise idle, ``--quick`` ~5.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import http.client  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import random  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator, Sequence  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import common  # noqa: E402
import gevent  # noqa: E402
import requests  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402
from gevent.queue import Queue  # noqa: E402
from kontrol_setup import (  # noqa: E402
    Sites,
    Tree,
    baseline_tree,
    common_cpus,
    current_tree,
    etcd_version,
    foreign_modules,
    install_cleanup,
    scratch_dir,
    unpin,
    use_tree,
)

SCRIPT = str(Path(__file__).resolve())
STORAGES = ("sqlite", "etcd", "etcd2", "postgres")
#: The storages several Kontrol processes share (``kontrol --workers``; sqlite runs one).
SHARED_STORAGES = ("etcd", "etcd2", "postgres")
DEFAULT_BASELINE = "8e8e5a0"
USER = "alice"
ENVIRONMENT = "bench"
WS_ENVIRONMENT = "bench-ws"
REGION = "eu"
VERSION = "1.0.0"
#: Kites per name: the "100 matches" query asks for one name (10,000 kites: 100 names).
PER_NAME = 100
#: Registry timings (seconds): the defaults, and the --quick ones. --quick has 5x fewer kites: heartbeats
#: 5x as often and refreshes 5x as often as their TTL allows the default's load -- the same heartbeats/s
#: and storage refreshes/s, and the same refresh wave (kites/s), as 10k kites with the defaults.
TIMINGS = {"default": {"heartbeat_interval": 10.0, "update_interval": 60.0, "key_ttl": 90.0},
           "quick": {"heartbeat_interval": 2.0, "update_interval": 12.0, "key_ttl": 18.0}}
#: Client processes, and registrations / heartbeats in flight per process.
WORKERS = 2
REGISTER_CONCURRENCY = 16
HEARTBEAT_CONCURRENCY = 16
WS_CONCURRENCY = 32
#: Calls per call in flight that warm a call row up and size it (its timed calls then take ~--seconds).
PROBE_CALLS = 4
#: The refresh wave: every kite due within this share of the update interval (the registry
#: spreads a kite's refresh over [0.8, 1.0] update intervals after its last write).
WAVE_SHARE = 0.2
#: The wave's window lasts at least its spread plus this (and one heartbeat interval), and until
#: every kite of the wave was refreshed; the refresher gets WAVE_TIMEOUT seconds after the wave's
#: end before the window is closed anyway.
WAVE_TAIL = 3.0
WAVE_TIMEOUT = 30.0
#: "Not falling behind" during the wave: answered heartbeats at least this share of the offered rate.
HB_RATE_SHARE = 0.98
#: Seconds a client phase may take before the run is abandoned.
PHASE_TIMEOUT = 300.0
HTTP_TIMEOUT = 30.0
#: Seconds the Kontrol gets to delete the websocket kites after they close.
WS_DELETE_TIMEOUT = 15.0


def kite_id(run: str, i: int) -> str:
    """The id of kite ``i`` (a UUID, as real kites have; PostgreSQL's Go schema takes nothing else)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kontrol-scale/{run}/{i}"))


def kite_name(i: int) -> str:
    return f"svc{i // PER_NAME:05d}"


def hostname(i: int) -> str:
    return f"host{i:06d}"


def identity(run: str, i: int) -> dict[str, str]:
    """Kite ``i``'s 7 fields: the "1 match" query, and what it registers as."""
    return {"name": kite_name(i), "username": USER, "id": kite_id(run, i), "environment": ENVIRONMENT,
            "region": REGION, "version": VERSION, "hostname": hostname(i)}


def name_query(group: int) -> dict[str, str]:
    """The "100 matches" query: every kite of name ``group``."""
    return {"username": USER, "environment": ENVIRONMENT, "name": kite_name(group * PER_NAME)}


def latency_summary(ms: list[float]) -> dict[str, float | None]:
    s = sorted(ms)
    return {"p50": common.percentile(s, 50), "p99": common.percentile(s, 99), "max": s[-1] if s else None}


def read_json_line(proc: subprocess.Popen, timeout: float, what: str) -> dict[str, Any]:
    """The next stdout line of a child process, as JSON (a timeout or EOF raises)."""
    line = b""
    with gevent.Timeout(timeout, False):
        line = proc.stdout.readline()
    try:
        return json.loads(line)
    except ValueError:
        raise RuntimeError(f"{what} answered {line[:300]!r} (exit status {proc.poll()})") from None


def send_line(proc: subprocess.Popen, text: str) -> None:
    proc.stdin.write(text.encode() + b"\n")
    proc.stdin.flush()


class KeepAlive:
    """One keep-alive HTTP/1.1 connection (``http.client``), reopened after a failure.

    Not ``requests``: on the 2-core machine this was written on ``requests.Session.get``
    costs ~0.8 ms of client CPU per request, ``http.client`` ~0.12 ms, and the Kontrol
    spends ~0.25 ms per heartbeat -- with one CPU for all the clients, ``requests``
    would measure itself, not the Kontrol.
    """

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection(common.HOST, port, timeout=HTTP_TIMEOUT)

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, bytes]:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        try:
            self.conn.request(method, path, body=body, headers=headers)
            response = self.conn.getresponse()
            return response.status, response.read()
        except BaseException:
            self.conn.close()  # the next request reconnects
            raise


# --------------------------------------------------------------------------- --serve: the Kontrol

def serve(storage: str, timings: dict[str, float], tree: Path, workers: int = 1) -> None:
    """``--serve STORAGE``: a Kontrol of ``tree``'s code on 127.0.0.1 and a free port.

    Prints ``READY {port, url, kite_key, kontrol_file, modules, foreign}``, or ``READY
    {unsupported}`` when this version's ``open_storage`` does not know the storage.
    Routes for the bench: ``GET /bench/stats`` (refresh and upsert counters, registry
    size, refresher lag, refreshes of the wave still to do: no storage call), ``GET
    /bench/count`` (the storage's count of kites without Kontrol's own entry; the
    registry's, and with ``?ids=1`` its kite ids; the modules check again) and ``POST
    /bench/refresh-wave?spread=S`` (every live kite's refresh due within S seconds, or
    sooner if it was due sooner).

    ``--serve-workers N`` (N > 1, today's code only): N Kontrol processes on one port, as
    ``kontrol --workers N`` runs them (``SO_REUSEPORT``, one kite id, storage and key pair made
    once before they start); each also serves the bench routes on a port of its own, listed
    in READY as ``control_ports`` with the workers' ``pids``.
    """
    import kontrol as kontrol_package
    from kontrol import Kontrol

    logging.basicConfig(level=logging.INFO, format="%(asctime)s [%(process)d] %(name)s %(levelname)s %(message)s")
    try:
        kontrol = Kontrol(bench_config(free_port() if workers > 1 else 0), storage, **timings)
    except ValueError as e:
        if "unknown storage" not in str(e):
            raise
        print("READY " + json.dumps({"unsupported": str(e)}), flush=True)
        return
    if workers > 1:
        serve_workers(kontrol, storage, timings, tree, workers)
        return
    watch_lag = add_bench_routes(kontrol, tree)
    server = gevent.spawn(kontrol.run)
    if not kontrol.kite.server_ready_notify().wait(20):
        sys.exit("the Kontrol did not start")
    gevent.spawn(watch_lag)
    key = kontrol.register_user(USER)
    modules, foreign = foreign_modules(tree)
    print("READY " + json.dumps({"port": kontrol.kite.port, "url": kontrol.kite.url, "kite_key": key,
                                 "kontrol_file": kontrol_package.__file__, "modules": modules, "foreign": foreign}),
          flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, kontrol.close)
    server.join()


def bench_config(port: int) -> Any:
    """The bench Kontrol's config: user ``koding`` on 127.0.0.1:``port`` (0: a free one)."""
    from kite import Config

    config = Config()
    config.username, config.ip, config.port = "koding", common.HOST, port
    return config


def free_port() -> int:
    with socket.socket() as s:
        s.bind((common.HOST, 0))
        return int(s.getsockname()[1])


def serve_workers(first: Any, storage: str, timings: dict[str, float], tree: Path, count: int) -> None:
    """``--serve-workers``: ``first`` (not started) made the key pair and alice's kite key; ``count``
    forked workers then serve its port, each with the bench routes on a control port of its own."""
    from gevent.pywsgi import WSGIServer

    import kontrol as kontrol_package
    from kontrol import Kontrol

    port, key, kontrol_id = first.kite.config.port, first.register_user(USER), str(uuid.uuid4())
    url = f"http://{common.HOST}:{port}/kite"
    first.storage.close()
    ready_r, ready_w = os.pipe()
    pids = []
    for _ in range(count):
        pid = os.fork()
        if pid == 0:  # a worker, before this process made any greenlet of its own
            os.close(ready_r)
            status = 1
            try:
                kontrol = Kontrol(bench_config(port), storage, **timings)
                kontrol.kite.reuse_port, kontrol.kite.id = True, kontrol_id
                watch_lag = add_bench_routes(kontrol, tree)
                control = WSGIServer((common.HOST, 0), kontrol.kite.app, log=None)
                control.start()
                server = gevent.spawn(kontrol.run)
                if not kontrol.kite.server_ready_notify().wait(20):
                    sys.exit("a Kontrol worker did not start")
                gevent.spawn(watch_lag)
                os.write(ready_w, f"{os.getpid()} {control.server_port}\n".encode())
                for sig in (signal.SIGTERM, signal.SIGINT):
                    gevent.signal_handler(sig, kontrol.close)
                server.join()
                status = 0
            finally:
                os._exit(status)
        pids.append(pid)
    os.close(ready_w)
    reader = FileObjectPosix(ready_r, "rb")
    with gevent.Timeout(60, RuntimeError("the Kontrol workers did not start")):
        lines = [reader.readline().decode().split() for _ in range(count)]
    control_ports = [int(port_text) for _, port_text in lines]
    modules, foreign = foreign_modules(tree)
    print("READY " + json.dumps({"port": port, "url": url, "kite_key": key, "kontrol_file": kontrol_package.__file__,
                                 "modules": modules, "foreign": foreign, "control_ports": control_ports,
                                 "pids": pids}), flush=True)

    def stop() -> None:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, stop)
    for pid in pids:
        while True:
            try:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    break
            except ChildProcessError:
                break
            gevent.sleep(0.2)


def add_bench_routes(kontrol: Any, tree: Path) -> Callable[[], None]:
    """The ``/bench/*`` routes of :func:`serve` on ``kontrol``'s Flask app, and the counters behind them;
    returns the loop that tracks the refresher's lag (to spawn once the Kontrol serves)."""
    from flask import jsonify, request

    counters = {"upserts": 0, "upsert_s": 0.0, "refreshes": 0, "refresh_s": 0.0, "refresh_missing": 0,
                "refresh_failed": 0, "max_lag_s": 0.0}
    store = kontrol.storage
    inf = float("inf")

    def timed(calls: str, seconds: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                result = fn(*args, **kwargs)
            except Exception:
                if calls == "refreshes":
                    counters["refresh_failed"] += 1
                raise
            finally:
                counters[calls] += 1
                counters[seconds] += time.perf_counter() - t0
            if calls == "refreshes" and result is False:
                counters["refresh_missing"] += 1
            return result

        return call

    # The registry calls them through the instance, so these wrappers see every call.
    store.upsert = timed("upserts", "upsert_s", store.upsert)
    store.refresh = timed("refreshes", "refresh_s", store.refresh)
    entries = kontrol.registry._entries
    wave = {"end": float("-inf")}  # when the last refresh of the bench's wave is due

    def lag() -> float:
        """How long the most overdue refresh has been due (in-progress ones are ``inf``)."""
        now = time.monotonic()
        return max([0.0, *(now - e.next_refresh for e in list(entries.values()) if e.next_refresh != inf)])

    def watch_lag() -> None:
        while True:
            gevent.sleep(1.0)
            counters["max_lag_s"] = max(counters["max_lag_s"], lag())

    def stats() -> Any:
        pending = sum(1 for e in list(entries.values()) if e.next_refresh <= wave["end"] or e.next_refresh == inf)
        return jsonify({**counters, "registry": len(entries), "lag_s": lag(), "wave_pending": pending})

    def count() -> Any:
        own = store.get_by_id(kontrol.kite.id) is not None  # today's Kontrol registers itself, 8e8e5a0's does not
        modules, foreign = foreign_modules(tree)
        live = [kite_id for kite_id in list(entries) if kite_id != kontrol.kite.id]
        answer = {"count": store.count() - own, "own": own, "registry": len(live), "modules": modules,
                  "foreign": foreign}
        if request.args.get("ids"):
            answer["ids"] = live
        return jsonify(answer)

    def refresh_wave() -> Any:
        now, spread = time.monotonic(), float(request.args["spread"])
        due = [e for e in list(entries.values()) if e.next_refresh != inf and e.kite.id != kontrol.kite.id]
        schedule = getattr(kontrol.registry, "_schedule", None)  # since acd7f2a a heap says when to look
        for e in due:  # brought forward, never put off (an overdue refresh stays due)
            e.next_refresh = min(e.next_refresh, now + random.uniform(0.0, spread))
            if schedule is not None:
                schedule(e)
        wave["end"] = now + spread
        return jsonify({"scheduled": len(due)})

    app = kontrol.kite.app
    app.add_url_rule("/bench/stats", "bench_stats", stats)
    app.add_url_rule("/bench/count", "bench_count", count)
    app.add_url_rule("/bench/refresh-wave", "bench_refresh_wave", refresh_wave, methods=["POST"])
    return watch_lag


# --------------------------------------------------------------------------- --worker: HTTP kites


@dataclass
class Window:
    """Heartbeats since the last ``mark``."""

    sent: int = 0
    pong: int = 0
    again: int = 0
    errors: int = 0
    first_error: str = ""
    latencies_ms: list[float] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "pong": self.pong, "again": self.again, "errors": self.errors,
                "first_error": self.first_error, "latencies_ms": [round(x, 3) for x in self.latencies_ms],
                "lag": latency_summary(self.lags_ms)}


def worker(spec: dict[str, Any]) -> None:
    """``--worker SPEC``: register kites ``index, index + workers, ...`` over HTTP, then heartbeat them.

    stdin commands: ``go`` (start), ``mark`` (print the heartbeat window so far and start a
    new one), ``stop``.
    """
    port, key, run = spec["port"], spec["kite_key"], spec["run"]
    total, interval = spec["kites"], spec["interval"]
    mine = list(range(spec["index"], total, spec["workers"]))
    paths = {i: f"/heartbeat?id={kite_id(run, i)}" for i in mine}
    registered = set()
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    print(json.dumps({"ready": True}), flush=True)
    if stdin.readline().strip() != b"go":
        return
    t0 = spec["t0"]  # the heartbeat schedule's origin (CLOCK_MONOTONIC is system-wide)
    state = {"window": Window(), "again_total": 0, "errors_total": 0}

    connections = max(spec["register_concurrency"], spec["heartbeat_concurrency"])
    #: Kite i lives on connection i % connections, as a real kite registers and heartbeats through a
    #: keep-alive client of its own: with ``kontrol --workers`` all of it reaches one worker.
    queues: list[Queue] = [Queue() for _ in range(connections)]
    reports: list[tuple[int, list[float], list[str]]] = []

    def register(conn: KeepAlive, i: int, latencies: list[float], errors: list[str]) -> None:
        body = json.dumps({"url": f"http://{hostname(i)}.example:4001/kite", "kite": identity(run, i),
                           "auth": {"type": "kiteKey", "key": key}}).encode()
        t = time.perf_counter()
        try:
            status, text = conn.request("POST", "/register", body)
            if status != 200 or json.loads(text).get("heartbeatInterval") is None:
                raise RuntimeError(f"HTTP {status}: {text[:200]!r}")
        except Exception as e:
            errors.append(repr(e))
            return
        latencies.append((time.perf_counter() - t) * 1000)
        registered.add(i)

    def beat(conn: KeepAlive, i: int, due: float) -> None:
        w: Window = state["window"]
        start = time.monotonic()
        w.lags_ms.append((start - due) * 1000)
        w.sent += 1
        try:
            status, body = conn.request("GET", paths[i])
            text = body.decode(errors="replace").strip() if status == 200 else f"HTTP {status}: {body[:100]!r}"
        except Exception as e:
            text = repr(e)
        elapsed = (time.monotonic() - start) * 1000
        w = state["window"]  # a mark may have started a new window meanwhile
        if text == "pong":
            w.pong += 1
            w.latencies_ms.append(elapsed)
        elif text == "registeragain":
            w.again += 1
            state["again_total"] += 1
        else:
            w.errors += 1
            w.first_error = w.first_error or text[:200]
            state["errors_total"] += 1

    def connection(c: int) -> None:
        """One keep-alive connection: registers its kites one by one (due heartbeats of the ones already
        registered go first), then heartbeats them."""
        conn, queue = KeepAlive(port), queues[c]
        latencies: list[float] = []
        errors: list[str] = []
        for i in mine[c::connections]:
            while not queue.empty():
                beat(conn, *queue.get())
            register(conn, i, latencies, errors)
        reports.append((c, latencies, errors))
        if len(reports) == connections:
            latencies = [x for _, lat, _ in reports for x in lat]
            errors = [e for _, _, errs in reports for e in errs]
            print(json.dumps({"registered": len(registered), "errors": len(errors),
                              "first_error": errors[0] if errors else "", "start": started,
                              "end": time.monotonic(), "latencies_ms": [round(x, 3) for x in latencies]}),
                  flush=True)
        while True:
            beat(conn, *queue.get())

    def schedule() -> None:
        """Kite i beats at t0 + (c + i / total) * interval, c = 0, 1, ...: spread evenly."""
        cycle = 0
        while True:
            for n, i in enumerate(mine):
                due = t0 + (cycle + i / total) * interval
                wait = due - time.monotonic()
                if wait > 0.002:
                    gevent.sleep(wait)
                if i in registered:
                    queues[n % connections].put((i, due))
            cycle += 1

    started = time.monotonic()
    jobs = [gevent.spawn(schedule), *(gevent.spawn(connection, c) for c in range(connections))]
    for line in stdin:
        command = line.strip().decode()
        if command == "mark":
            window, state["window"] = state["window"], Window()
            print(json.dumps({"window": window.to_json(), "again_total": state["again_total"],
                              "errors_total": state["errors_total"],
                              "queued": sum(q.qsize() for q in queues)}), flush=True)
        elif command == "stop":
            break
    gevent.killall(jobs)


class Worker:
    """A ``--worker`` or ``--worker-ws`` process on ``tree``'s code (it answers ``{"ready": true}`` once set up)."""

    def __init__(self, tree: Tree, mode: str, spec: dict[str, Any], ready_timeout: float = 30):
        self._stderr = tempfile.TemporaryFile()
        cmd, env = tree.command(SCRIPT, mode, json.dumps(spec))
        self.proc = common.spawn(cmd, tree.path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr,
                                 env=env)
        self.answer(ready_timeout)

    def answer(self, timeout: float = 30) -> dict[str, Any]:
        try:
            return read_json_line(self.proc, timeout, "a client process")
        except RuntimeError as e:
            self._stderr.seek(0)
            raise RuntimeError(f"{e}; stderr: {self._stderr.read()[-600:].decode(errors='replace')}") from None

    def tell(self, command: str) -> None:
        send_line(self.proc, command)

    def stop(self) -> None:
        common.stop(self.proc)
        self._stderr.close()


# --------------------------------------------------------------------------- --worker-ws: websocket kites


def worker_ws(spec: dict[str, Any]) -> None:
    """``--worker-ws SPEC``: ``count`` kites; ``go``: each calls ``register`` over its own connection;
    ``close``: close them all."""
    from kite import Config, Kite

    common.raise_fd_limit()
    kites = []
    for i in range(spec["count"]):
        c = Config()
        c.username, c.environment, c.region = USER, WS_ENVIRONMENT, REGION
        c.kite_key, c.kontrol_url, c.kontrol_user = spec["kite_key"], spec["url"], "koding"
        k = Kite(f"ws{i // PER_NAME:05d}", VERSION, c)
        k.hostname = f"wshost{i:06d}"
        kites.append(k)
    stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    print(json.dumps({"ready": True}), flush=True)
    if stdin.readline().strip() != b"go":
        return
    todo = iter(kites)
    latencies: list[float] = []
    errors: list[str] = []

    def one_by_one() -> None:
        for k in todo:
            t = time.perf_counter()
            try:
                k.register(f"http://{k.hostname}.example:4001/kite")
            except Exception as e:
                errors.append(repr(e))
                continue
            latencies.append((time.perf_counter() - t) * 1000)

    started = time.monotonic()
    gevent.joinall([gevent.spawn(one_by_one) for _ in range(spec["concurrency"])])
    print(json.dumps({"registered": len(latencies), "errors": len(errors), "first_error": errors[0] if errors else "",
                      "seconds": time.monotonic() - started, "latencies_ms": [round(x, 3) for x in latencies]}),
          flush=True)
    if stdin.readline().strip() == b"close":
        for k in kites:
            k.close()
        print(json.dumps({"closed": len(kites)}), flush=True)
    stdin.readline()


# --------------------------------------------------------------------------- one run


@dataclass
class Plan:
    kites: int
    quick: bool
    timings: dict[str, float]
    seconds: float
    ws_kites: int
    rounds: int
    pin: bool
    py_spy: Path | None = None
    #: Kontrol processes of the all-cores runs (1: none).
    workers: int = 1

    @property
    def wave_spread(self) -> float:
        return WAVE_SHARE * self.timings["update_interval"]


@dataclass
class Measure:
    """One row of one run: calls/s (or the row's figure), latency in ms, the Kontrol's CPU %."""

    rate: float | None
    p50: float | None = None
    p99: float | None = None
    cpu: float | None = None
    errors: int = 0


@dataclass
class RunResult:
    """Everything one run of one version measured; ``failed`` / ``unsupported``: why it has nothing."""

    measures: dict[str, Measure] = field(default_factory=dict)
    registered: int = 0
    lost: int = 0
    again: int = 0
    errors: int = 0
    first_error: str = ""
    scheduled: int = 0
    wave_left: int = 0
    wave_seconds: float = 0.0
    refresh_failed: int = 0
    max_lag: float = 0.0
    kontrol_file: str = ""
    modules: int = 0
    #: Seconds per phase (progress lines), and the 1-minute load average at the end.
    phases: dict[str, float] = field(default_factory=dict)
    load: float | None = None
    failed: str = ""
    unsupported: str = ""

    def error(self, count: int, text: str) -> None:
        self.errors += count
        if count and not self.first_error:
            self.first_error = text


@contextmanager
def phase(plan: Plan, pid: int, result: RunResult, run_name: str, name: str) -> Iterator[None]:
    """A phase of a run: timed into ``result.phases``, and profiled with ``--py-spy``."""
    t0 = time.monotonic()
    try:
        with profiled(plan, pid, f"{run_name}-{name}"):
            yield
    finally:
        result.phases[name] = time.monotonic() - t0


@contextmanager
def profiled(plan: Plan, pid: int, name: str) -> Iterator[None]:
    """With ``--py-spy DIR``: ``py-spy record`` the Kontrol over the block into ``DIR/<name>.txt``
    (collapsed stacks, ``--nonblocking``: the Kontrol is sampled, never paused)."""
    if plan.py_spy is None:
        yield
        return
    cmd = [py_spy_binary() or "py-spy", "record", "--pid", str(pid), "--rate", "200", "--format", "raw",
           "--nonblocking", "-o", str(plan.py_spy / f"{name}.txt")]
    proc = common.spawn(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        common.stop(proc)


def py_spy_binary() -> str | None:
    venv = Path(sys.executable).parent / "py-spy"
    return shutil.which("py-spy") or (str(venv) if venv.exists() else None)


def cpu_now(pid: int | None) -> float | None:
    try:
        return common.cpu_seconds(pid) if pid is not None else None
    except OSError:
        return None


class CpuMeter:
    """The CPU % processes ``pids`` used together since the meter was made (200 %: two cores' worth)."""

    def __init__(self, pids: Sequence[int]):
        self.pids = list(pids)
        self.cpu0, self.t0 = self._cpu(), time.monotonic()

    def _cpu(self) -> float | None:
        seconds = [cpu_now(pid) for pid in self.pids]
        return None if None in seconds else sum(s for s in seconds if s is not None)

    def percent(self) -> float | None:
        cpu, seconds = self._cpu(), time.monotonic() - self.t0
        return None if cpu is None or self.cpu0 is None or seconds <= 0 else (cpu - self.cpu0) / seconds * 100


class KontrolProcess:
    """One version's ``--serve`` process on one storage location, and its bench routes (summed over the
    workers' control ports when the version runs several workers)."""

    def __init__(self, tree: Tree, location: str, plan: Plan):
        extra = ["--serve-workers", str(tree.workers)] if tree.workers > 1 else []
        cmd, env = tree.command(SCRIPT, "--serve", location, "--timings", json.dumps(plan.timings), *extra)
        self.server = common.Server(cmd, tree.path, f"{tree.name} Kontrol", env=env)
        self.info = json.loads(self.server.ready)
        self.session = requests.Session()
        if "unsupported" in self.info:
            return
        kontrol_file = Path(self.info["kontrol_file"]).resolve()
        if not kontrol_file.is_relative_to(tree.path) or self.info["foreign"]:
            raise RuntimeError(f"the {tree.name} Kontrol imported kontrol from {kontrol_file} and "
                               f"{self.info['foreign']} from outside {tree.path}")
        ports = self.info.get("control_ports") or [self.info["port"]]
        self.bases = [f"http://{common.HOST}:{port}" for port in ports]
        #: The Kontrol processes: the workers, or the ``--serve`` process itself.
        self.pids: list[int] = self.info.get("pids") or [self.server.pid]
        if tree.workers > 1 and plan.pin:
            unpin(self.server.pid)  # the workers spread over every CPU, as `kontrol --workers` does

    @property
    def pid(self) -> int:
        """The process profiled with ``--py-spy`` (the first worker)."""
        return self.pids[0]

    def _get(self, path: str, **params: Any) -> list[dict[str, Any]]:
        return [self.session.get(base + path, params=params, timeout=HTTP_TIMEOUT).json() for base in self.bases]

    def stats(self) -> dict[str, Any]:
        """The counters summed over the workers (the refresher's lags: the worst)."""
        answers = self._get("/bench/stats")
        total = {key: sum(a[key] for a in answers) for key in answers[0]}
        for key in ("max_lag_s", "lag_s"):
            total[key] = max(a[key] for a in answers)
        return total

    def count(self) -> dict[str, Any]:
        """The storage's count (from one worker) and the kites any worker's registry holds."""
        if len(self.bases) == 1:
            return self._get("/bench/count")[0]
        answers = self._get("/bench/count", ids=1)
        live = set().union(*(a.pop("ids") for a in answers))
        return {**answers[0], "registry": len(live), "foreign": [f for a in answers for f in a["foreign"]]}

    def refresh_wave(self, spread: float) -> int:
        scheduled = 0
        for base in self.bases:
            r = self.session.post(base + "/bench/refresh-wave", params={"spread": spread}, timeout=HTTP_TIMEOUT)
            scheduled += r.json()["scheduled"]
        return scheduled

    def stop(self) -> None:
        self.session.close()
        self.server.stop()


def start_workers(kontrol: KontrolProcess, clients: Tree, run: str, plan: Plan) -> list[Worker]:
    """The ``--worker`` processes, set up (they register when told ``go``)."""
    t0 = time.monotonic() + 1.0
    specs = [{"port": kontrol.info["port"], "kite_key": kontrol.info["kite_key"], "run": run, "kites": plan.kites,
              "interval": plan.timings["heartbeat_interval"], "index": w, "workers": WORKERS, "t0": t0,
              "register_concurrency": REGISTER_CONCURRENCY, "heartbeat_concurrency": HEARTBEAT_CONCURRENCY}
             for w in range(WORKERS)]
    return [Worker(clients, "--worker", spec) for spec in specs]


def register_phase(kontrol: KontrolProcess, workers: list[Worker], result: RunResult) -> Measure:
    """Phase 1: the workers register every kite over HTTP."""
    meter = CpuMeter(kontrol.pids)
    for w in workers:
        w.tell("go")
    reports = [w.answer(PHASE_TIMEOUT) for w in workers]
    cpu = meter.percent()
    seconds = max(r["end"] for r in reports) - min(r["start"] for r in reports)
    result.registered = sum(r["registered"] for r in reports)
    errors = sum(r["errors"] for r in reports)
    result.error(errors, next((r["first_error"] for r in reports if r["errors"]), ""))
    lat = latency_summary([x for r in reports for x in r["latencies_ms"]])
    return Measure(result.registered / seconds if seconds > 0 else None, lat["p50"], lat["p99"], cpu, errors)


@contextmanager
def caller_client(url: str, key: str) -> Iterator[Any]:
    """A kite connection to the Kontrol from this process, with alice's kite key."""
    from kite import Auth, Config, Kite

    cfg = Config()
    cfg.username, cfg.environment, cfg.region, cfg.kite_key = USER, ENVIRONMENT, REGION, key
    caller = Kite("bench-caller", VERSION, cfg)
    try:
        client = caller.new_client(url)
        client.auth = Auth("kiteKey", key)
        client.dial_timeout(10)
        yield client
    finally:
        caller.close()


#: The call rows: key, label, method, matches (1: a kite's 7 fields; PER_NAME: a name), calls in flight.
CALLS = (
    ("getkites-1", "getKites 1 match, 1 in flight", "getKites", 1, 1),
    ("getkites-1-16", "getKites 1 match, 16 in flight (one connection)", "getKites", 1, 16),
    ("getkites-100", f"getKites {PER_NAME} matches, 1 in flight", "getKites", PER_NAME, 1),
    ("getkites-100-16", f"getKites {PER_NAME} matches, 16 in flight (one connection)", "getKites", PER_NAME, 16),
    ("gettoken", "getToken, 1 in flight", "getToken", 1, 1),
    ("gettoken-16", "getToken, 16 in flight (one connection)", "getToken", 1, 16),
)


def kontrol_call(method: str, matches: int, run: str, kites: int, rng: random.Random) -> Callable[[Any], None]:
    """A call for :func:`common.run_load`: ``method`` on a random kite (or name); raises on a wrong answer."""

    def call(client: Any) -> None:
        if matches == 1:
            query = identity(run, rng.randrange(kites))
        else:
            query = name_query(rng.randrange(kites // PER_NAME))
        if method == "getToken":
            token = client.tell_with_timeout("getToken", HTTP_TIMEOUT, query)
            if not isinstance(token, str) or not token:
                raise RuntimeError(f"getToken {query} answered {token!r}")
            return
        found = client.tell_with_timeout("getKites", HTTP_TIMEOUT, {"query": query})["kites"]
        if len(found) != matches:
            raise RuntimeError(f"getKites found {len(found)} kites, expected {matches}: {query}")

    return call


def warm_up(client: Any, kites: int) -> None:
    """One ``getKites`` per name: Kontrol signs the caller's token for each audience once."""
    for group in range(kites // PER_NAME):
        client.tell_with_timeout("getKites", HTTP_TIMEOUT, {"query": name_query(group)})


def call_phase(kontrol: KontrolProcess, client: Any, run: str, plan: Plan, result: RunResult) -> None:
    """Phase 2: every :data:`CALLS` row, ~``plan.seconds`` each, sized by a probe that warms it up."""
    rng = random.Random(run)
    for key, label, method, matches, conc in CALLS:
        call = kontrol_call(method, matches, run, plan.kites, rng)
        probe = common.run_load([client], call, conc, PROBE_CALLS * conc)
        n = common.calls_for(probe.rate, plan.seconds, minimum=PROBE_CALLS * conc)
        meter = CpuMeter(kontrol.pids)
        stats = common.run_load([client], call, conc, n)
        result.error(probe.errors + stats.errors, f"{label}: {probe.note or stats.note}")
        result.measures[key] = Measure(stats.rate, stats.p50_ms, stats.p99_ms, meter.percent(), stats.errors)


def mark(workers: list[Worker]) -> list[dict[str, Any]]:
    """Close the workers' heartbeat windows: what each saw since the last mark."""
    for w in workers:
        w.tell("mark")
    return [w.answer() for w in workers]


def wave_phase(kontrol: KontrolProcess, workers: list[Worker], plan: Plan, result: RunResult) -> Measure:
    """Phase 3: heartbeats while a refresh wave of every kite runs (see the module docstring)."""
    mark(workers)
    interval, spread = plan.timings["heartbeat_interval"], plan.wave_spread
    s0 = kontrol.stats()
    meter = CpuMeter(kontrol.pids)
    result.scheduled = kontrol.refresh_wave(spread)
    t0 = time.monotonic()
    shortest, longest = t0 + max(interval, spread + WAVE_TAIL), t0 + spread + WAVE_TIMEOUT
    lag = 0.0
    while True:
        gevent.sleep(1.0)
        s1 = kontrol.stats()
        lag = max(lag, s1["lag_s"])
        now = time.monotonic()
        if (now >= shortest and s1["wave_pending"] == 0) or now >= longest:
            break
    marks = mark(workers)
    seconds, cpu = time.monotonic() - t0, meter.percent()
    result.wave_left, result.wave_seconds = s1["wave_pending"], seconds
    result.refresh_failed = s1["refresh_failed"] - s0["refresh_failed"]
    result.max_lag = max(lag, s1["max_lag_s"])
    windows = [m["window"] for m in marks]
    hb = latency_summary([x for w in windows for x in w["latencies_ms"]])
    result.again = sum(m["again_total"] for m in marks)
    errors = sum(m["errors_total"] for m in marks)
    result.error(errors, "heartbeat: " + next((w["first_error"] for w in windows if w["first_error"]), ""))
    return Measure(sum(w["pong"] for w in windows) / seconds, hb["p50"], hb["p99"], cpu, errors)


def check_kites(kontrol: KontrolProcess, result: RunResult, expected: int) -> dict[str, Any]:
    """Phase 4: the storage and the registry must hold ``expected`` bench kites; the modules check again."""
    counted = kontrol.count()
    if counted["foreign"]:
        raise RuntimeError(f"the Kontrol loaded {counted['foreign']} from outside its tree")
    result.lost = max(result.lost, expected - min(counted["count"], counted["registry"]))
    result.modules = counted["modules"]
    return counted


def ws_phase(kontrol: KontrolProcess, clients: Tree, plan: Plan, result: RunResult) -> Measure:
    """Phase 5: websocket kites register, then close; Kontrol must delete them again."""
    spec = {"kite_key": kontrol.info["kite_key"], "url": kontrol.info["url"], "count": plan.ws_kites,
            "concurrency": WS_CONCURRENCY}
    ws = Worker(clients, "--worker-ws", spec, ready_timeout=120)
    try:
        meter = CpuMeter(kontrol.pids)
        ws.tell("go")
        r = ws.answer(PHASE_TIMEOUT)
        cpu = meter.percent()
        result.error(r["errors"], "websocket register: " + r["first_error"])
        ws.tell("close")
        ws.answer(60)
    finally:
        ws.stop()
    deadline = time.monotonic() + WS_DELETE_TIMEOUT
    while (left := kontrol.count()["count"] - result.registered) > 0 and time.monotonic() < deadline:
        gevent.sleep(0.2)
    result.error(max(0, left), f"{left} websocket kites still stored {WS_DELETE_TIMEOUT:g} s after closing")
    lat = latency_summary(r["latencies_ms"])
    return Measure(r["registered"] / r["seconds"] if r["seconds"] else None, lat["p50"], lat["p99"], cpu,
                   r["errors"])


def one_run(kind: str, tree: Tree, clients: Tree, sites: Sites, plan: Plan, name: str) -> RunResult:
    """Every phase for ``tree``'s Kontrol on a fresh location of ``kind``, with ``clients``' client code;
    ``name`` tags the profiles."""
    run = uuid.uuid4().hex[:8]
    location = sites.open(kind, run)
    result = RunResult()
    kontrol: KontrolProcess | None = None
    workers: list[Worker] = []
    try:
        if tree.workers > 1 and kind not in SHARED_STORAGES:
            result.unsupported = f"{kind} runs one Kontrol process (kontrol --help)"
            return result
        kontrol = KontrolProcess(tree, location, plan)
        if "unsupported" in kontrol.info:
            result.unsupported = kontrol.info["unsupported"]
            return result
        result.kontrol_file = kontrol.info["kontrol_file"]
        workers = start_workers(kontrol, clients, run, plan)
        with phase(plan, kontrol.pid, result, name, "register"):
            result.measures["register"] = register_phase(kontrol, workers, result)
        with caller_client(kontrol.info["url"], kontrol.info["kite_key"]) as client:
            warm_up(client, plan.kites)
            with phase(plan, kontrol.pid, result, name, "calls"):
                call_phase(kontrol, client, run, plan, result)
        with phase(plan, kontrol.pid, result, name, "wave"):
            result.measures["heartbeat"] = wave_phase(kontrol, workers, plan, result)
        check_kites(kontrol, result, result.registered)
        if plan.ws_kites:
            with phase(plan, kontrol.pid, result, name, "ws"):
                result.measures["ws"] = ws_phase(kontrol, clients, plan, result)
            check_kites(kontrol, result, result.registered)
    except Exception as e:
        result.failed = f"{e!r}"[:400]
    finally:
        result.load = os.getloadavg()[0]
        for w in workers:
            w.stop()
        if kontrol is not None:
            kontrol.stop()
        try:
            sites.clear(kind, run, location)
        except Exception as e:
            common.progress(f"[{name}] clearing {location} failed: {e!r}")
    return result


def run_summary(r: RunResult) -> str:
    """A progress line's worth of one run."""
    if r.failed or r.unsupported:
        return r.failed or f"n/a: {r.unsupported}"
    m = r.measures
    parts = [f"{label.split(',')[0]} {common.fmt(m[key].rate)}/s"
             for key, label, *_ in (("register", "register"), *CALLS) if key in m]
    hb = m.get("heartbeat")
    if hb:
        parts.append(f"wave hb p99 {common.fmt(hb.p99, 1)} ms")
    phases = ", ".join(f"{name} {seconds:.0f}" for name, seconds in r.phases.items())
    return "; ".join(parts) + (f"; lost {r.lost}, registeragain {r.again}, errors {r.errors} (phases, s: {phases}; "
                               f"load average {r.load:.1f})")


# --------------------------------------------------------------------------- the tables

#: One storage's runs: version -> one result per round.
Runs = dict[str, list[RunResult]]


def measure_rows(plan: Plan) -> list[tuple[str, str]]:
    """The rows with calls/s (or the row's figure) and latency, in the order printed: (key, label)."""
    offered = plan.kites / plan.timings["heartbeat_interval"]
    rows = [("register", f"HTTP register, {plan.kites:,} kites ({WORKERS} procs × {REGISTER_CONCURRENCY} in flight)"),
            *((key, label) for key, label, *_ in CALLS),
            ("heartbeat", f"heartbeats during a refresh wave (answered/s of {common.fmt(offered)} offered)")]
    if plan.ws_kites:
        rows.append(("ws", f"websocket register, {plan.ws_kites:,} kites, {WS_CONCURRENCY} in flight"))
    return rows


def values(runs: Sequence[RunResult], key: str, attr: str) -> list[float | None]:
    """``attr`` of row ``key`` in each run (``None`` where the run has no such figure)."""
    return [getattr(r.measures[key], attr) if key in r.measures else None for r in runs]


def med(runs: Sequence[RunResult], key: str, attr: str) -> float | None:
    return common.median_spread(values(runs, key, attr))[0]


def ratios(current: Sequence[RunResult], baseline: Sequence[RunResult], key: str,
           attr: str) -> tuple[float | None, float | None, float | None]:
    """Median, min and max of current / baseline, round by round."""
    pairs = zip(values(current, key, attr), values(baseline, key, attr), strict=True)
    return common.median_spread([a / b if a and b else None for a, b in pairs])


def times(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}×"


def rate_cell(runs: Sequence[RunResult], key: str) -> str:
    return f"{common.fmt(med(runs, key, 'rate'))} /s"


def latency_cell(runs: Sequence[RunResult], key: str) -> str:
    return f"{common.fmt(med(runs, key, 'p50'), 2)} / {common.fmt(med(runs, key, 'p99'), 2)}"


RATIO_COLUMNS = ["current", "baseline", "ratio", "min–max", "p50 / p99 ms current", "p50 / p99 ms baseline",
                 "p99 ratio", "Kontrol CPU % cur / base"]
#: The all-cores columns (today's Kontrol as ``--workers N``), when the bench ran them.
WORKER_COLUMNS = ["workers", "workers / current", "min–max ", "p50 / p99 ms workers", "workers CPU %"]


def storage_table(runs: Runs, plan: Plan, baseline_na: bool) -> common.Table:
    """One storage's rows: the medians of each version, the ratios current / baseline and, with the
    all-cores runs, workers / current."""
    workers = runs.get("workers", [])
    extra = WORKER_COLUMNS if workers else []
    table = common.Table(["measurement", *RATIO_COLUMNS, *extra], right=RATIO_COLUMNS + extra)
    current, baseline = runs["current"], runs.get("baseline", [])
    workers_na = not workers or bool(workers[0].unsupported)
    for key, label in measure_rows(plan):
        cpu = common.fmt(med(current, key, "cpu"))
        if baseline_na:
            base = ["n/a", "", "", "n/a", ""]
            cpu += " / n/a"
        else:
            rate, lo, hi = ratios(current, baseline, key, "rate")
            spread = f"{lo:.2f}–{hi:.2f}" if plan.rounds > 1 and lo is not None else ""
            base = [rate_cell(baseline, key), times(rate), spread, latency_cell(baseline, key),
                    times(ratios(current, baseline, key, "p99")[0])]
            cpu += f" / {common.fmt(med(baseline, key, 'cpu'))}"
        cells = [rate_cell(current, key), *base[:3], latency_cell(current, key), *base[3:], cpu]
        if workers and workers_na:
            cells += ["n/a", "", "", "", ""]
        elif workers:
            rate, lo, hi = ratios(workers, current, key, "rate")
            spread = f"{lo:.2f}–{hi:.2f}" if plan.rounds > 1 and lo is not None else ""
            cells += [rate_cell(workers, key), times(rate), spread, latency_cell(workers, key),
                      common.fmt(med(workers, key, "cpu"))]
        table.add(label, *cells)
    return table


def totals(runs: Sequence[RunResult]) -> str:
    return " / ".join(f"{sum(getattr(r, a) for r in runs):,}" for a in ("lost", "again", "errors"))


def wave_check(runs: Sequence[RunResult]) -> str:
    """The refresh waves: kites left unrefreshed when the window closed, its length, failed refreshes, the lag."""
    done = [r for r in runs if r.scheduled]
    if not done:
        return "-"
    return (f"{sum(r.wave_left for r in done):,} of {max(r.scheduled for r in done):,} kites left unrefreshed, "
            f"window ≤ {max(r.wave_seconds for r in done):.0f} s, {sum(r.refresh_failed for r in done)} failed, "
            f"refresher ≤ {max(r.max_lag for r in done):.1f} s late (whole run)")


def loads(runs: Sequence[RunResult]) -> str:
    """The 1-minute load averages at the end of the runs (other processes on the machine show there)."""
    return " ".join(f"{r.load:.1f}" for r in runs if r.load is not None) or "-"


def check_lines(runs: Runs, baseline_na: bool) -> str:
    """The lines under a storage's table: the refresh waves, kites lost and errors, the load."""
    def both(fn: Callable[[list[RunResult]], str]) -> str:
        text = f"current {fn(runs['current'])}; baseline {'n/a' if baseline_na else fn(runs['baseline'])}"
        workers = runs.get("workers", [])
        if workers:
            text += f"; workers {'n/a' if workers[0].unsupported else fn(workers)}"
        return text

    return (f"refresh wave (worst round): {both(wave_check)}\n"
            f"kites lost / registeragain / errors (all rounds): {both(totals)}\n"
            f"load average at the end of each round: {both(loads)}")


def problems(kind: str, runs: Runs, plan: Plan) -> list[str]:
    """``!`` lines: failed runs, lost kites, errors, heartbeats answered below the offered rate."""
    lines = []
    for version, rs in runs.items():
        for i, r in enumerate(rs):
            where = f"! {kind} / {version} / round {i + 1}:"
            if r.failed:
                lines.append(f"{where} FAILED: {r.failed}")
            if r.lost:
                lines.append(f"{where} {r.lost:,} kites lost")
            if r.errors or r.again:
                lines.append(f"{where} {r.errors:,} errors, {r.again:,} registeragain; first: {r.first_error[:200]}")
            hb = r.measures.get("heartbeat")
            offered = r.registered / plan.timings["heartbeat_interval"]
            if hb is not None and hb.rate is not None and hb.rate < HB_RATE_SHARE * offered:
                lines.append(f"{where} heartbeats fell behind in the refresh wave: {hb.rate:,.0f}/s "
                             f"answered of {offered:,.0f}/s offered")
    return lines


def report(results: dict[str, Runs], skipped: dict[str, str], plan: Plan) -> bool:
    """Print every storage's table and checks; whether a kite was lost or a run failed."""
    bad = False
    for kind, runs in results.items():
        unsupported = next((r.unsupported for r in runs.get("baseline", []) if r.unsupported), "")
        na = "baseline" not in runs or bool(unsupported)
        title = kind + (f" (baseline n/a: no {kind} backend, its open_storage says {unsupported[:60]!r}…)"
                        if unsupported else "")
        print(f"{title}\n{storage_table(runs, plan, na).render()}\n{check_lines(runs, na)}")
        lines = problems(kind, runs, plan)
        print("\n".join(lines) + "\n" if lines else "")
        bad = bad or any(r.lost or r.failed for rs in runs.values() for r in rs)
    for kind, why in skipped.items():
        print(f"{kind}: skipped: {why}\n")
    print("kites lost: " + ("SOME (or a run failed): see the ! lines" if bad else "none, in either version"))
    return bad


def workers_note(plan: Plan) -> str:
    """What the all-cores rows are."""
    if plan.workers <= 1:
        return "all rows: one Kontrol process (--workers 1: no all-cores rows)"
    return (f"current and baseline: one Kontrol process; workers: today's Kontrol as {plan.workers} processes on one "
            f"port (SO_REUSEPORT, one kite id, as `kontrol --workers {plan.workers}`), free to use every CPU (the "
            f"clients stay where they are pinned), on {', '.join(SHARED_STORAGES)}; sqlite runs one process; "
            f"workers / current: median (min–max) of the per-round ratios")


def header(plan: Plan, sites: Sites, seconds: float, pinning: str, versions: str, load: tuple[float, float]) -> str:
    """The lines above the tables: the runs, the versions, the machine, the settings."""
    t = plan.timings
    machine = common.machine_info(None).replace(", node -, kite.js -", "")
    servers = ", ".join([*([f"etcd {etcd_version()} (data on tmpfs)"] if sites.etcd else []),
                         *([f"PostgreSQL {sites.postgres.version} (fsync off)"] if sites.postgres else [])])
    return (f"Kontrol scale benchmark, current against baseline{' (--quick)' if plan.quick else ''}: "
            f"{plan.kites:,} HTTP kites of {plan.kites // PER_NAME:,} names; medians of {plan.rounds} alternating "
            f"round{'s' * (plan.rounds > 1)} per storage; {seconds:.0f} s total\n"
            f"{versions}\n"
            f"{machine}{', ' + servers if servers else ''}; {pinning}\n"
            f"1-minute load average {load[0]:.1f} at the start, {load[1]:.1f} at the end (other processes share "
            f"the CPUs: compare the ratios, which alternate, more than the absolute figures)\n"
            f"registry: heartbeat {t['heartbeat_interval']:g} s, update {t['update_interval']:g} s, key TTL "
            f"{t['key_ttl']:g} s; clients (today's code for both versions): {WORKERS} processes of HTTP kites, calls "
            f"on one kite connection from this process, ~{plan.seconds:g} s per row, while every kite heartbeats\n"
            f"getKites 1 match / getToken: a random kite's 7 fields; {PER_NAME} matches: username/environment/name; "
            f"refresh wave: every kite's refresh due within {plan.wave_spread:g} s (the wave a mass registration "
            f"brings one update interval later, brought forward)\n"
            f"ratio: current / baseline, median (min–max) of the per-round ratios: > 1 is faster for /s, < 1 better "
            f"for p99\n{workers_note(plan)}\n")


def versions_note(trees: list[Tree], results: dict[str, Runs]) -> str:
    """What each version is, and where its Kontrols were seen to import ``kontrol`` from."""
    lines = []
    for tree in trees:
        done = [r for runs in results.values() for r in runs.get(tree.name, []) if r.kontrol_file]
        line = f"{tree.name}: {tree.label}, run from {tree.path} (removed at exit)"
        if done:
            files = ", ".join(sorted({r.kontrol_file for r in done}))
            line += (f"; its {len(done)} Kontrols imported kontrol from {files} and {min(r.modules for r in done)}+ "
                     f"kite/kontrol modules, none from elsewhere (checked at the start and the end of every run)")
        lines.append(line)
    if len(trees) == 1:
        lines.append("baseline: none (--baseline none)")
    return "\n".join(lines)


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", default=DEFAULT_BASELINE,
                    help=f"the commit to compare with (default {DEFAULT_BASELINE}); none: only today's code")
    ap.add_argument("--storage", default=",".join(STORAGES), help=f"comma-separated: {','.join(STORAGES)}")
    ap.add_argument("--rounds", type=int, default=None,
                    help="alternating rounds per storage (default 3; 1 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2k kites, 2 s heartbeats, 1 round, short rows: ~3 minutes")
    ap.add_argument("--kites", type=int, default=None, help="HTTP kites (default 10000; 2000 with --quick)")
    ap.add_argument("--seconds", type=float, default=None, help="seconds per call row (default 2; 0.8 with --quick)")
    ap.add_argument("--ws-kites", type=int, default=None,
                    help="websocket-registered kites (default 200; 100 with --quick; 0: skip)")
    ap.add_argument("--pin", choices=("split", "none"), default="split",
                    help="split (default): the Kontrol on the first CPU, clients on the second; none")
    ap.add_argument("--py-spy", type=Path, metavar="DIR", default=None,
                    help="py-spy record the Kontrol in each phase into DIR/<storage>-<version>-r<round>-<phase>.txt")
    # internal modes
    ap.add_argument("--workers", type=int, default=len(common_cpus()),
                    help="the all-cores rows: today's Kontrol as this many workers (default: one per CPU) on the "
                         "shared storages; 0 or 1: skip them")
    ap.add_argument("--serve", metavar="STORAGE", help=argparse.SUPPRESS)
    ap.add_argument("--serve-workers", type=int, default=1, help=argparse.SUPPRESS)
    ap.add_argument("--timings", help=argparse.SUPPRESS)
    ap.add_argument("--tree", type=Path, default=common.ROOT, help=argparse.SUPPRESS)
    ap.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--worker-ws", metavar="SPEC", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    opts.storages = [s.strip() for s in opts.storage.split(",") if s.strip()]
    if not opts.serve and not opts.worker and not opts.worker_ws:
        if not opts.storages or not set(opts.storages) <= set(STORAGES):
            ap.error(f"--storage: choose from {', '.join(STORAGES)}")
        if opts.kites is not None and opts.kites < PER_NAME:
            ap.error(f"--kites must be at least {PER_NAME}")
    return opts


def make_plan(opts: argparse.Namespace) -> Plan:
    quick = opts.quick
    plan = Plan(kites=opts.kites or (2000 if quick else 10_000), quick=quick,
                timings=TIMINGS["quick" if quick else "default"], seconds=opts.seconds or (0.8 if quick else 2.0),
                ws_kites=(100 if quick else 200) if opts.ws_kites is None else opts.ws_kites,
                rounds=opts.rounds or (1 if quick else 3), pin=opts.pin == "split", py_spy=opts.py_spy,
                workers=max(1, opts.workers))
    if plan.py_spy is not None:
        if not py_spy_binary():
            sys.exit("--py-spy: py-spy is not installed (pip install py-spy)")
        plan.py_spy.mkdir(parents=True, exist_ok=True)
    return plan


def bench_storage(kind: str, trees: list[Tree], sites: Sites, plan: Plan) -> Runs:
    """``plan.rounds`` rounds of one run per version on ``kind``, the order swapped every round."""
    runs: Runs = {t.name: [] for t in trees}
    for rnd in range(plan.rounds):
        for tree in trees if rnd % 2 == 0 else trees[::-1]:
            previous = runs[tree.name]
            if previous and previous[0].unsupported:
                previous.append(previous[0])  # n/a in every round
                continue
            name = f"{kind}-{tree.name}-r{rnd + 1}"
            common.progress(f"[{name}] {plan.kites:,} kites on a fresh {kind} location")
            started = time.monotonic()
            result = one_run(kind, tree, trees[0], sites, plan, name)
            common.progress(f"[{name}] {time.monotonic() - started:.0f} s: {run_summary(result)}")
            previous.append(result)
    return runs


def bench(opts: argparse.Namespace) -> int:
    """The comparison: every storage, every version; prints the tables; 1 if a kite was lost or a run failed."""
    plan = make_plan(opts)
    common_cpus()  # before pinning
    install_cleanup()
    common.raise_fd_limit()
    pinning = common.pin_cpus("split" if plan.pin else "none")
    if plan.pin:
        pinning += ", etcd and PostgreSQL not pinned"
    started, load0 = time.perf_counter(), os.getloadavg()[0]
    trees = [current_tree()]
    use_tree(trees[0].path)  # this process's clients are "current" too
    sys.path.append(str(common.ROOT))  # after the copy: only for tests.kontrol.conftest (postgres)
    if opts.baseline.lower() != "none":
        trees.append(baseline_tree(opts.baseline))
    if plan.workers > 1:
        trees.append(dataclasses.replace(trees[0], name="workers", workers=plan.workers))
    sites = Sites(scratch_dir(), plan.pin)
    results: dict[str, Runs] = {}
    skipped: dict[str, str] = {}
    try:
        for kind in opts.storages:
            why = sites.unavailable(kind)
            if not why:
                try:
                    sites.start(kind)
                except Exception as e:
                    why = f"its server did not start: {e}"[:400]
            if why:
                common.progress(f"[{kind}] skipped: {why}")
                skipped[kind] = why
                continue
            results[kind] = bench_storage(kind, trees, sites, plan)
        print(header(plan, sites, time.perf_counter() - started, pinning, versions_note(trees, results),
                     (load0, os.getloadavg()[0])))
    finally:
        sites.stop()
    return 1 if report(results, skipped, plan) else 0


def main() -> int:
    opts = parse_args()
    if opts.serve or opts.worker or opts.worker_ws:
        use_tree(opts.tree.resolve())
    if opts.serve:
        serve(opts.serve, json.loads(opts.timings), opts.tree.resolve(), opts.serve_workers)
        return 0
    if opts.worker:
        worker(json.loads(opts.worker))
        return 0
    if opts.worker_ws:
        worker_ws(json.loads(opts.worker_ws))
        return 0
    return bench(opts)


if __name__ == "__main__":
    sys.exit(main())
