"""Kontrol at scale: register rate, ``getKites`` latency and 10k heartbeating kites, on sqlite and etcd.

    .venv/bin/python bench/kontrol_scale.py [--kites N] [--quick] [--storage sqlite,etcd] [--pin split|none]
                                            [--hb-seconds S] [--getkites-calls N] [--ws-kites N] [--py-spy DIR]

For each storage (an sqlite file in a temporary directory; a real etcd -- ``/usr/bin/etcd``
-- started here on free 127.0.0.1 ports, v2 API enabled, with a temporary data dir on
tmpfs) a Kontrol runs in a process of its own (``--serve``) with the default registry
timings (heartbeat 10 s, update 60 s, key TTL 90 s; ``--quick``: 2 / 6 / 9 s) and prints
its port and a kite key for user ``alice``. Then:

1. **register rate**: two client processes (``--worker``, the kites split between them,
   16 registrations in flight each, one keep-alive connection per greenlet) ``POST
   /register`` N kites (all alice's, distinct ids and hostnames; 10 kites per name).
   Each kite starts heartbeating as soon as it is registered, as a real kite does.
2. **getKites**: one kite connection from this process (``kiteKey`` auth) makes
   sequential ``getKites`` calls, the query forms in turn, each naming a random kite;
   an answer must hold exactly the expected number of kites. First one call per kite
   name: Kontrol signs a token per (audience, caller) and reuses it for 48 h, so only
   a caller's first lookup of a name pays an RSA signature -- reported on its own row.
   Then the steady state twice: "quiet" (heartbeats paused, at most 8 s at a time, so
   no kite goes silent for the registry's interval + 20 s; the storage refresher still
   runs) and with all kites heartbeating.
3. **heartbeats**: every kite sends ``GET /heartbeat?id=`` once per interval, the kites
   spread evenly over it. The measured window lasts at least ``--hb-seconds`` and until
   the Kontrol has refreshed every kite in its storage once (update interval + 3 s after
   the last registration), so the refresh wave happens under the heartbeat load.
   Reported: answered heartbeats/s against the offered rate, latency (and how late the
   clients sent, to tell a slow client from a slow Kontrol), ``registeragain`` answers
   (must be 0), the Kontrol's CPU (``/proc/PID/task/*/schedstat``), storage refreshes
   done/failed and how late the refresher got. Then the storage's ``count()`` must be
   N: the exit status is 1 when a kite was lost.
4. **websocket register**: ``--worker-ws``: 1k kites (200 with ``--quick``), each a
   :class:`kite.Kite` calling ``register`` over its own connection; then they close and
   Kontrol must delete them again.

The HTTP clients use ``http.client``, not ``requests`` (see :class:`KeepAlive`). The
Kontrol's counters come from a ``GET /bench/stats`` route the ``--serve`` process adds
(storage ``count()``, registry size, storage refresh/upsert timings, refresher lag).
``--py-spy DIR`` records the Kontrol with py-spy in each phase (collapsed stacks).
Pinning (``--pin split``, default): the Kontrol on the first CPU, the clients and this
process on the second, etcd unpinned. Progress on stderr; one table and the machine
line on stdout. The default takes ~4 minutes on 2 cores, ``--quick`` under one.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import atexit  # noqa: E402
import functools  # noqa: E402
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
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import common  # noqa: E402
import gevent  # noqa: E402
import requests  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402
from gevent.queue import Queue  # noqa: E402

SCRIPT = str(Path(__file__).resolve())
STORAGES = ("sqlite", "etcd")
USER = "alice"
ENVIRONMENT = "bench"
WS_ENVIRONMENT = "bench-ws"
REGION = "eu"
VERSION = "1.0.0"
#: Kites per name: the "10 kites" query asks for one name.
PER_NAME = 10
#: Registry timings (seconds): the defaults, and the --quick ones (same proportions, 5x faster).
TIMINGS = {"default": {"heartbeat_interval": 10.0, "update_interval": 60.0, "key_ttl": 90.0},
           "quick": {"heartbeat_interval": 2.0, "update_interval": 6.0, "key_ttl": 9.0}}
#: Client processes, and registrations / heartbeats in flight per process.
WORKERS = 2
REGISTER_CONCURRENCY = 16
HEARTBEAT_CONCURRENCY = 16
WS_CONCURRENCY = 32
#: Targets of the issue: getKites p50 per storage (ms).
GETKITES_P50_TARGET_MS = {"sqlite": 2.0, "etcd": 5.0}
#: "Not falling behind": answered heartbeats/s at least this share of the offered rate, the
#: Kontrol below this CPU share, the refresher never later than this (seconds).
HB_RATE_SHARE = 0.98
CPU_LIMIT = 0.90
REFRESH_LAG_LIMIT_S = 5.0
#: Seconds a client phase may take before the run is abandoned.
PHASE_TIMEOUT = 300.0
ETCD_START_TIMEOUT = 30.0
HTTP_TIMEOUT = 30.0
#: Longest pause of the heartbeats for a "quiet" getKites run, seconds (the registry forgets a
#: kite after heartbeat interval + 20 s without a beat).
QUIET_SLICE = 8.0


def kite_id(run: str, i: int) -> str:
    """The id of kite ``i`` (a UUID, as real kites have)."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"kontrol-scale/{run}/{i}"))


def kite_name(i: int) -> str:
    return f"svc{i // PER_NAME:05d}"


def hostname(i: int) -> str:
    return f"host{i:06d}"


def identity(run: str, i: int) -> dict[str, str]:
    return {"name": kite_name(i), "username": USER, "id": kite_id(run, i), "environment": ENVIRONMENT,
            "region": REGION, "version": VERSION, "hostname": hostname(i)}


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


def serve(storage: str, timings: dict[str, float]) -> None:
    """``--serve STORAGE``: a Kontrol on 127.0.0.1 and a free port; prints ``READY {port, url, kite_key}``."""
    from kite import Config
    from kontrol import Kontrol

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    config = Config()
    config.username, config.ip, config.port = "koding", common.HOST, 0
    kontrol = Kontrol(config, storage, **timings)
    counters = {"upserts": 0, "upsert_s": 0.0, "refreshes": 0, "refresh_s": 0.0, "refresh_missing": 0,
                "refresh_failed": 0, "max_lag_s": 0.0}
    store = kontrol.storage

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
    registry = kontrol.registry

    def lag() -> float:
        """How long the most overdue refresh has been due (in-progress ones are ``inf``)."""
        now = time.monotonic()
        due = [now - e.next_refresh for e in list(registry._entries.values()) if e.next_refresh != float("inf")]
        return max([0.0, *due])

    def watch_lag() -> None:
        while True:
            gevent.sleep(1.0)
            counters["max_lag_s"] = max(counters["max_lag_s"], lag())

    def stats() -> Any:
        from flask import jsonify

        return jsonify({**counters, "count": store.count(), "registry": len(registry), "lag_s": lag()})

    kontrol.kite.app.add_url_rule("/bench/stats", "bench_stats", stats)
    server = gevent.spawn(kontrol.run)
    if not kontrol.kite.server_ready_notify().wait(20):
        sys.exit("the Kontrol did not start")
    gevent.spawn(watch_lag)
    key = kontrol.register_user(USER)
    print("READY " + json.dumps({"port": kontrol.kite.port, "url": kontrol.kite.url, "kite_key": key}), flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, kontrol.close)
    server.join()


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

    stdin commands: ``go`` (start), ``pause`` / ``resume`` (heartbeats), ``mark`` (print the
    heartbeat window so far and start a new one), ``stop``.
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
    state = {"paused": False, "window": Window(), "again_total": 0, "errors_total": 0}

    def register_all() -> None:
        todo = iter(mine)
        latencies: list[float] = []
        errors: list[str] = []

        def one_by_one() -> None:
            conn = KeepAlive(port)
            for i in todo:
                body = json.dumps({"url": f"http://{hostname(i)}.example:4001/kite", "kite": identity(run, i),
                                   "auth": {"type": "kiteKey", "key": key}}).encode()
                t = time.perf_counter()
                try:
                    status, text = conn.request("POST", "/register", body)
                    if status != 200 or json.loads(text).get("heartbeatInterval") is None:
                        raise RuntimeError(f"HTTP {status}: {text[:200]!r}")
                except Exception as e:
                    errors.append(repr(e))
                    continue
                latencies.append((time.perf_counter() - t) * 1000)
                registered.add(i)

        started = time.monotonic()
        gevent.joinall([gevent.spawn(one_by_one) for _ in range(spec["register_concurrency"])])
        print(json.dumps({"registered": len(registered), "errors": len(errors),
                          "first_error": errors[0] if errors else "", "start": started, "end": time.monotonic(),
                          "latencies_ms": [round(x, 3) for x in latencies]}), flush=True)

    queue: Queue = Queue()

    def schedule() -> None:
        """Kite i beats at t0 + (c + i / total) * interval, c = 0, 1, ...: spread evenly."""
        cycle = 0
        while True:
            for i in mine:
                due = t0 + (cycle + i / total) * interval
                wait = due - time.monotonic()
                if wait > 0.002:
                    gevent.sleep(wait)
                if not state["paused"] and i in registered:
                    queue.put((i, due))
            cycle += 1

    def beat() -> None:
        conn = KeepAlive(port)
        while True:
            i, due = queue.get()
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

    jobs = [gevent.spawn(register_all), gevent.spawn(schedule)]
    jobs += [gevent.spawn(beat) for _ in range(spec["heartbeat_concurrency"])]
    for line in stdin:
        command = line.strip().decode()
        if command == "pause":
            state["paused"] = True
        elif command == "resume":
            state["paused"] = False
        elif command == "mark":
            window, state["window"] = state["window"], Window()
            print(json.dumps({"window": window.to_json(), "again_total": state["again_total"],
                              "errors_total": state["errors_total"], "queued": queue.qsize()}), flush=True)
        elif command == "stop":
            break
    gevent.killall(jobs)


class Worker:
    """A ``--worker`` or ``--worker-ws`` process (it answers ``{"ready": true}`` once set up)."""

    def __init__(self, mode: str, spec: dict[str, Any], ready_timeout: float = 30):
        self._stderr = tempfile.TemporaryFile()
        self.proc = common.spawn([sys.executable, SCRIPT, mode, json.dumps(spec)], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=self._stderr)
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


# --------------------------------------------------------------------------- etcd


def free_port() -> int:
    with socket.socket() as s:
        s.bind((common.HOST, 0))
        return s.getsockname()[1]


class Etcd:
    """A single-node etcd on free 127.0.0.1 ports (v2 API enabled) with a temporary data dir."""

    def __init__(self, scratch: Path, unpin: bool):
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"http://{common.HOST}:{self.client_port}"
        self.log_path = scratch / "etcd.log"
        peer = f"http://{common.HOST}:{self.peer_port}"
        binary = shutil.which("etcd") or "/usr/bin/etcd"
        cmd = [binary, "--name=kontrol-bench", f"--data-dir={scratch / 'etcd-data'}",
               f"--listen-client-urls={self.url}", f"--advertise-client-urls={self.url}",
               f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
               f"--initial-cluster=kontrol-bench={peer}", "--enable-v2=true", "--logger=zap", "--log-level=warn"]
        taskset = shutil.which("taskset")
        if unpin and taskset:  # spawned as a server (pinned); etcd gets every CPU back
            cmd = [taskset, "-c", ",".join(map(str, sorted(common_cpus()))), *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = common.spawn(cmd, role="server", stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ETCD_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                health = requests.get(self.url + "/health", timeout=1).json()
                if health.get("health") == "true" and requests.get(self.url + "/v2/keys", timeout=1).ok:
                    return
            except (requests.RequestException, ValueError):
                pass
            gevent.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd did not become healthy in {ETCD_START_TIMEOUT:g} s: {self.log_tail()}")

    def log_tail(self, size: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        common.stop(self.proc)


@functools.lru_cache(maxsize=1)
def common_cpus() -> set[int]:
    """Every CPU this process could run on before pinning."""
    return set(os.sched_getaffinity(0))


def etcd_version() -> str:
    binary = shutil.which("etcd") or "/usr/bin/etcd"
    try:
        out = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.split("\n", 1)[0].replace("etcd Version: ", "")


# --------------------------------------------------------------------------- the measurements


@dataclass
class Row:
    storage: str
    measurement: str
    value: str
    target: str = ""
    ok: bool | None = None


@dataclass
class Plan:
    kites: int
    quick: bool
    timings: dict[str, float]
    hb_seconds: float
    getkites_calls: int
    ws_kites: int
    pin: bool
    py_spy: Path | None = None


@contextmanager
def profiled(plan: Plan, pid: int, name: str) -> Iterator[None]:
    """With ``--py-spy DIR``: ``py-spy record`` the Kontrol over the block into ``DIR/<name>.txt``
    (collapsed stacks, ``--nonblocking``: the Kontrol is sampled, never paused)."""
    if plan.py_spy is None:
        yield
        return
    binary = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = plan.py_spy / f"{name}.txt"
    proc = common.spawn([binary, "record", "--pid", str(pid), "--rate", "200", "--format", "raw", "--nonblocking",
                         "-o", str(out)], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
        common.stop(proc)


QUERY_FORMS = ("7 fields", "id only", "6 fields (…/hostname)", "constraint + id prefix", "3 fields: 10 kites")


def query_for(form: str, run: str, kites: int, rng: random.Random) -> tuple[dict[str, str], int]:
    """A getKites query of ``form`` naming random kites, and how many kites it must find."""
    i = rng.randrange(kites)
    k = identity(run, i)
    if form == "7 fields":
        return {f: k[f] for f in ("username", "environment", "name", "version", "region", "hostname", "id")}, 1
    if form == "id only":
        return {"id": k["id"]}, 1
    if form == "6 fields (…/hostname)":
        return {f: k[f] for f in ("username", "environment", "name", "version", "region", "hostname")}, 1
    if form == "constraint + id prefix":
        q = {f: k[f] for f in ("username", "environment", "name", "region", "hostname")}
        return {**q, "version": ">= 1.0.0, < 2.0.0", "id": k["id"][:8]}, 1
    group = rng.randrange(kites // PER_NAME)
    return {"username": USER, "environment": ENVIRONMENT, "name": kite_name(group * PER_NAME)}, PER_NAME


class GetKitesRun:
    """Sequential getKites on one connection, the query forms in turn; per form (latencies ms, errors)."""

    def __init__(self, client: Any, run: str, kites: int, seed: int):
        self.client, self.run_id, self.kites = client, run, kites
        self.rng = random.Random(seed)
        self.out: dict[str, tuple[list[float], list[str]]] = {f: ([], []) for f in QUERY_FORMS}
        self.done = 0
        #: Seconds spent calling, and the Kontrol's CPU seconds meanwhile.
        self.seconds = self.server_cpu = 0.0

    def run(self, calls: int, server_pid: int, deadline: float = float("inf")) -> None:
        """Call until ``calls`` calls were made in all, or until ``deadline`` (monotonic)."""
        t0, cpu0 = time.monotonic(), cpu_now(server_pid)
        while self.done < calls and time.monotonic() < deadline:
            form = QUERY_FORMS[self.done % len(QUERY_FORMS)]
            self.done += 1
            query, expected = query_for(form, self.run_id, self.kites, self.rng)
            t = time.perf_counter()
            try:
                found = self.client.tell_with_timeout("getKites", HTTP_TIMEOUT, {"query": query})["kites"]
            except Exception as e:
                self.out[form][1].append(repr(e))
                continue
            elapsed = (time.perf_counter() - t) * 1000
            if len(found) != expected:
                self.out[form][1].append(f"{query} found {len(found)} kites, expected {expected}")
                continue
            self.out[form][0].append(elapsed)
        self.seconds += time.monotonic() - t0
        self.server_cpu += (cpu_now(server_pid) or 0.0) - (cpu0 or 0.0)


def first_lookups(client: Any, kites: int) -> tuple[list[float], list[str]]:
    """The 10-kite query once for every kite name, in random order: (latencies ms, errors)."""
    groups = list(range(kites // PER_NAME))
    random.Random(3).shuffle(groups)
    latencies: list[float] = []
    errors: list[str] = []
    for g in groups:
        query = {"username": USER, "environment": ENVIRONMENT, "name": kite_name(g * PER_NAME)}
        t = time.perf_counter()
        try:
            found = client.tell_with_timeout("getKites", HTTP_TIMEOUT, {"query": query})["kites"]
        except Exception as e:
            errors.append(repr(e))
            continue
        if len(found) != PER_NAME:
            errors.append(f"{query} found {len(found)} kites, expected {PER_NAME}")
            continue
        latencies.append((time.perf_counter() - t) * 1000)
    client.tell_with_timeout("getKites", HTTP_TIMEOUT, {"query": {"id": "warm-up"}})  # the "/" audience
    return latencies, errors


def cpu_percent(pid: int | None, before: float | None, seconds: float) -> float | None:
    if pid is None or before is None or seconds <= 0:
        return None
    try:
        return (common.cpu_seconds(pid) - before) / seconds * 100
    except OSError:
        return None


def cpu_now(pid: int | None) -> float | None:
    try:
        return common.cpu_seconds(pid) if pid is not None else None
    except OSError:
        return None


def clients_cpu(workers: list[Worker]) -> float:
    """CPU seconds the client processes have used so far."""
    return sum(cpu_now(w.proc.pid) or 0.0 for w in workers)


def ms(v: float | None) -> str:
    return common.fmt(v, 2)


def run_storage(kind: str, plan: Plan, scratch: Path) -> tuple[list[Row], bool]:
    """Every measurement on one storage; returns the rows and whether a kite was lost."""
    rows: list[Row] = []

    def add(measurement: str, value: str, target: str = "", ok: bool | None = None) -> None:
        rows.append(Row(kind, measurement, value, target, ok))

    etcd = None
    server = None
    workers: list[Worker] = []
    ws_worker: Worker | None = None
    caller = None
    session = requests.Session()
    lost = True
    try:
        if kind == "etcd":
            etcd = Etcd(scratch, plan.pin)
            storage = f"etcd://{common.HOST}:{etcd.client_port}/kontrol-bench"
        else:
            storage = str(scratch / "kontrol.db")
        server = common.Server([sys.executable, SCRIPT, "--serve", storage, "--timings", json.dumps(plan.timings)],
                               common.ROOT, f"Kontrol on {kind}")
        info = json.loads(server.ready)
        base, key, url = f"http://{common.HOST}:{info['port']}", info["kite_key"], info["url"]

        def stats() -> dict[str, Any]:
            return session.get(base + "/bench/stats", timeout=HTTP_TIMEOUT).json()

        run = uuid.uuid4().hex[:8]
        n, interval = plan.kites, plan.timings["heartbeat_interval"]

        # 1. register over HTTP; every kite heartbeats from its registration on
        common.progress(f"[{kind}] registering {n:,} kites over HTTP ({WORKERS} processes × "
                        f"{REGISTER_CONCURRENCY} in flight)")
        t0 = time.monotonic() + 1.0
        for w in range(WORKERS):
            spec = {"port": info["port"], "kite_key": key, "run": run, "kites": n, "interval": interval, "index": w,
                    "workers": WORKERS, "t0": t0, "register_concurrency": REGISTER_CONCURRENCY,
                    "heartbeat_concurrency": HEARTBEAT_CONCURRENCY}
            workers.append(Worker("--worker", spec))
        cpu0, etcd_cpu0, s0 = cpu_now(server.pid), cpu_now(etcd.proc.pid if etcd else None), stats()
        clients_cpu0 = clients_cpu(workers)
        with profiled(plan, server.pid, f"{kind}-register"):
            for w in workers:
                w.tell("go")
            reports = [w.answer(PHASE_TIMEOUT) for w in workers]
        start, end = min(r["start"] for r in reports), max(r["end"] for r in reports)
        reg_seconds = end - start
        s1 = stats()
        registered = sum(r["registered"] for r in reports)
        reg_errors = sum(r["errors"] for r in reports)
        lat = latency_summary([x for r in reports for x in r["latencies_ms"]])
        srv_cpu = cpu_percent(server.pid, cpu0, reg_seconds)
        etcd_cpu = cpu_percent(etcd.proc.pid if etcd else None, etcd_cpu0, reg_seconds)
        client_cpu = (clients_cpu(workers) - clients_cpu0) / reg_seconds * 100
        upserts = s1["upserts"] - s0["upserts"]
        upsert_ms = (s1["upsert_s"] - s0["upsert_s"]) / upserts * 1000 if upserts else None
        note = (f"p50 {ms(lat['p50'])} / p99 {ms(lat['p99'])} ms; Kontrol CPU {common.fmt(srv_cpu)}%"
                f"{f', etcd CPU {common.fmt(etcd_cpu)}%' if etcd else ''}; storage upsert {ms(upsert_ms)} ms avg")
        add(f"HTTP register, {n:,} kites, {WORKERS * REGISTER_CONCURRENCY} in flight",
            f"{common.fmt(registered / reg_seconds)} /s ({reg_seconds:.1f} s)", "", None)
        add("  HTTP register latency", note)
        if reg_errors:
            add("  HTTP register errors", f"{reg_errors:,}: {next(r['first_error'] for r in reports if r['errors'])}",
                "0", False)
        common.progress(f"[{kind}] {registered:,} registered in {reg_seconds:.1f} s "
                        f"({registered / reg_seconds:,.0f}/s; {note}; client processes CPU {client_cpu:.0f}%); "
                        f"{reg_errors} errors")

        # 2. getKites, quiet then under the heartbeat load
        from kite import Auth, Config, Kite

        cfg = Config()
        cfg.username, cfg.environment, cfg.region, cfg.kite_key = USER, ENVIRONMENT, REGION, key
        caller = Kite("bench-caller", VERSION, cfg)
        client = caller.new_client(url)
        client.auth = Auth("kiteKey", key)
        client.dial_timeout(10)
        # Warm-up: one call per kite name. Kontrol caches a caller's token per audience
        # (/user/env/name) for its 48 h life, so only a caller's first lookup of a name pays
        # an RSA signature; these first calls are reported apart from the steady state.
        common.progress(f"[{kind}] warm-up: one getKites per kite name ({n // PER_NAME:,} names, first lookups)")
        first = first_lookups(client, n)
        s = latency_summary(first[0])
        value = f"p50 {ms(s['p50'])} / p99 {ms(s['p99'])} ms ({n // PER_NAME:,} names, 10-kite query, heartbeating)"
        add("getKites first call per name (signs a token)",
            value + (f"; {len(first[1])} errors: {first[1][0][:120]}" if first[1] else ""), "",
            None if not first[1] else False)
        target_ms = GETKITES_P50_TARGET_MS[kind]
        calls = plan.getkites_calls
        for label, quiet in (("quiet", True), ("heartbeating", False)):
            common.progress(f"[{kind}] {calls:,} getKites, {label}")
            gk = GetKitesRun(client, run, n, 1 if quiet else 2)
            with profiled(plan, server.pid, f"{kind}-getkites-{'quiet' if quiet else 'loaded'}"):
                if not quiet:
                    gk.run(calls, server.pid)
                while gk.done < calls:
                    # Heartbeats paused at most QUIET_SLICE seconds at a time, then every kite
                    # beats once: none may go quiet for the registry's interval + 20 s.
                    for w in workers:
                        w.tell("pause")
                    gevent.sleep(0.3)
                    gk.run(calls, server.pid, time.monotonic() + QUIET_SLICE)
                    for w in workers:
                        w.tell("resume")
                    if gk.done < calls:
                        common.progress(f"[{kind}]   {gk.done:,} calls; heartbeats resumed for {interval:g} s")
                        gevent.sleep(interval + 0.5)
            for form, (latencies, errors) in gk.out.items():
                if not latencies and not errors:
                    continue
                s = latency_summary(latencies)
                ok = not errors and s["p50"] is not None and s["p50"] < target_ms
                value = f"p50 {ms(s['p50'])} / p99 {ms(s['p99'])} ms"
                if errors:
                    value += f"; {len(errors)} errors: {errors[0][:120]}"
                add(f"getKites {form}, {label}", value, f"p50 < {target_ms:g} ms", ok)
            common.progress(f"[{kind}]   Kontrol CPU {gk.server_cpu / gk.seconds * 100:.0f}% during the getKites run")

        # 3. the heartbeat window, long enough for the storage refresh wave
        for w in workers:
            w.tell("mark")
        queued = [w.answer()["queued"] for w in workers]
        s0 = stats()
        win_start = time.monotonic()
        win_end = max(win_start + plan.hb_seconds, end + plan.timings["update_interval"] + 3)
        cpu0, etcd_cpu0 = cpu_now(server.pid), cpu_now(etcd.proc.pid if etcd else None)
        common.progress(f"[{kind}] {n:,} kites heartbeating every {interval:g} s: measuring "
                        f"{win_end - win_start:.0f} s (until every kite was refreshed in the storage once)")
        max_lag = s0["lag_s"]
        clients_cpu0 = clients_cpu(workers)
        with profiled(plan, server.pid, f"{kind}-heartbeats"):
            while time.monotonic() < win_end:
                gevent.sleep(min(2.0, max(0.0, win_end - time.monotonic())))
                max_lag = max(max_lag, stats()["lag_s"])
        for w in workers:
            w.tell("mark")
        marks = [w.answer() for w in workers]
        win_seconds = time.monotonic() - win_start
        srv_cpu = cpu_percent(server.pid, cpu0, win_seconds)
        etcd_cpu = cpu_percent(etcd.proc.pid if etcd else None, etcd_cpu0, win_seconds)
        client_cpu = (clients_cpu(workers) - clients_cpu0) / win_seconds * 100
        s1 = stats()
        windows = [m["window"] for m in marks]
        pongs = sum(w["pong"] for w in windows)
        offered = registered / interval
        rate = pongs / win_seconds
        hb = latency_summary([x for w in windows for x in w["latencies_ms"]])
        again_total = sum(m["again_total"] for m in marks)
        errors_total = sum(m["errors_total"] for m in marks)
        client_lag_p99 = max((w["lag"]["p99"] or 0) for w in windows)
        add(f"heartbeats answered /s ({win_seconds:.0f} s window)",
            f"{common.fmt(rate)} /s (offered {common.fmt(offered)} /s)", f"≥ {HB_RATE_SHARE:.0%} of offered",
            rate >= HB_RATE_SHARE * offered)
        add("  heartbeat latency", f"p50 {ms(hb['p50'])} / p99 {ms(hb['p99'])} / max {ms(hb['max'])} ms "
            f"(client send lag p99 {ms(client_lag_p99)} ms)")
        add("  registeragain answers (whole run)", f"{again_total:,}", "0", again_total == 0)
        add("  heartbeat errors (whole run)",
            f"{errors_total:,}" + (f": {next(w['first_error'] for w in windows if w['first_error'])}"
                                   if any(w["first_error"] for w in windows) else ""), "0", errors_total == 0)
        cpu_ok = srv_cpu is not None and srv_cpu < CPU_LIMIT * 100
        add("  Kontrol CPU during the window",
            f"{common.fmt(srv_cpu)}%" + (f" (etcd {common.fmt(etcd_cpu)}%)" if etcd else ""),
            f"< {CPU_LIMIT:.0%}", cpu_ok)
        refreshes = s1["refreshes"] - s0["refreshes"]
        refresh_ms = (s1["refresh_s"] - s0["refresh_s"]) / refreshes * 1000 if refreshes else None
        refresh_failed = s1["refresh_failed"] - s0["refresh_failed"]
        max_lag = max(max_lag, s1["max_lag_s"])
        add("  storage refreshes in the window",
            f"{refreshes:,} ({s1['refreshes']:,} in all, {refresh_failed} failed, {s1['refresh_missing']} rewritten; "
            f"{ms(refresh_ms)} ms avg)", f"≥ {registered:,}, 0 failed",
            s1["refreshes"] >= registered and s1["refresh_failed"] == 0)
        add("  refresher lag (most overdue refresh)", f"{max_lag:.2f} s", f"< {REFRESH_LAG_LIMIT_S:g} s",
            max_lag < REFRESH_LAG_LIMIT_S)
        count, live = s1["count"], s1["registry"]
        lost = count != n or live != n or registered != n
        add("kites in storage after the run (count())", f"{count:,} (registry {live:,})", f"= {n:,}", not lost)
        common.progress(f"[{kind}] window: {rate:,.0f} hb/s of {offered:,.0f} offered, p99 {ms(hb['p99'])} ms, "
                        f"{again_total} registeragain, {errors_total} errors, Kontrol CPU {common.fmt(srv_cpu)}%, "
                        f"{refreshes:,} refreshes, lag {max_lag:.2f} s; count {count:,}; client processes CPU "
                        f"{client_cpu:.0f}%, queued at start {queued}")

        # 4. websocket registrations
        if plan.ws_kites:
            common.progress(f"[{kind}] {plan.ws_kites:,} kites registering over their own websocket")
            spec = {"kite_key": key, "url": url, "count": plan.ws_kites, "concurrency": WS_CONCURRENCY}
            ws_worker = Worker("--worker-ws", spec, ready_timeout=120)
            cpu0 = cpu_now(server.pid)
            with profiled(plan, server.pid, f"{kind}-ws-register"):
                ws_worker.tell("go")
                r = ws_worker.answer(PHASE_TIMEOUT)
            srv_cpu = cpu_percent(server.pid, cpu0, r["seconds"])
            lat = latency_summary(r["latencies_ms"])
            after = stats()["count"]
            value = (f"{common.fmt(r['registered'] / r['seconds'])} /s ({r['registered']:,} in {r['seconds']:.1f} s; "
                     f"p50 {ms(lat['p50'])} / p99 {ms(lat['p99'])} ms incl. dial; Kontrol CPU {common.fmt(srv_cpu)}%)")
            if r["errors"]:
                value += f"; {r['errors']} errors: {r['first_error'][:120]}"
            add(f"websocket register, {plan.ws_kites:,} kites, {WS_CONCURRENCY} in flight", value, "0 errors",
                r["errors"] == 0)
            ws_worker.tell("close")
            ws_worker.answer(60)
            deadline = time.monotonic() + 15
            final = stats()["count"]
            while final != n and time.monotonic() < deadline:
                gevent.sleep(0.2)
                final = stats()["count"]
            add("  after they close: kites in storage", f"{final:,} (was {after:,} with them)", f"= {n:,}",
                final == n and after == n + r["registered"])
    finally:
        if caller is not None:
            caller.close()
        for w in [*workers, *([ws_worker] if ws_worker else [])]:
            w.stop()
        if server is not None:
            server.stop()
        if etcd is not None:
            etcd.stop()
    return rows, lost


# --------------------------------------------------------------------------- main

_scratch_dirs: list[Path] = []


def _remove_scratch() -> None:
    for d in _scratch_dirs:
        shutil.rmtree(d, ignore_errors=True)


def _cleanup_then(previous: Any, signum: int, frame: Any) -> None:
    _remove_scratch()
    if callable(previous):
        previous(signum, frame)


def scratch_dir() -> Path:
    # etcd fsyncs every write; tmpfs (as in the tests) keeps the disk out of the figures.
    where = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    d = Path(tempfile.mkdtemp(prefix="kontrol-scale-", dir=where))
    _scratch_dirs.append(d)
    return d


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kites", type=int, default=None, help="HTTP kites (default 10000; 2000 with --quick)")
    ap.add_argument("--quick", action="store_true", help="2k kites, 2 s heartbeats, 10 s window: under a minute")
    ap.add_argument("--storage", default=",".join(STORAGES), help="comma-separated: sqlite,etcd")
    ap.add_argument("--pin", choices=("split", "none"), default="split",
                    help="split (default): the Kontrol on the first CPU, clients on the second; none")
    ap.add_argument("--hb-seconds", type=float, default=None,
                    help="minimum heartbeat window (default 30; 10 with --quick); it also lasts until "
                         "every kite was refreshed in the storage once")
    ap.add_argument("--getkites-calls", type=int, default=None,
                    help="getKites calls per run (default 2000; 300 with --quick)")
    ap.add_argument("--ws-kites", type=int, default=None, help="websocket-registered kites (default 1000; 0: skip)")
    ap.add_argument("--py-spy", type=Path, metavar="DIR", default=None,
                    help="py-spy record the Kontrol in each phase into DIR/<storage>-<phase>.txt (collapsed stacks)")
    # internal modes
    ap.add_argument("--serve", metavar="STORAGE", help=argparse.SUPPRESS)
    ap.add_argument("--timings", help=argparse.SUPPRESS)
    ap.add_argument("--worker", metavar="SPEC", help=argparse.SUPPRESS)
    ap.add_argument("--worker-ws", metavar="SPEC", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.serve:
        serve(opts.serve, json.loads(opts.timings))
        return 0
    if opts.worker:
        worker(json.loads(opts.worker))
        return 0
    if opts.worker_ws:
        worker_ws(json.loads(opts.worker_ws))
        return 0

    storages = [s.strip() for s in opts.storage.split(",") if s.strip()]
    if not storages or not set(storages) <= set(STORAGES):
        ap.error(f"--storage: choose from {', '.join(STORAGES)}")
    quick = opts.quick
    kites = opts.kites or (2000 if quick else 10_000)
    if kites < PER_NAME:
        ap.error(f"--kites must be at least {PER_NAME}")
    plan = Plan(kites=kites, quick=quick, timings=TIMINGS["quick" if quick else "default"],
                hb_seconds=opts.hb_seconds or (10.0 if quick else 30.0),
                getkites_calls=opts.getkites_calls or (300 if quick else 2000),
                ws_kites=(200 if quick else 1000) if opts.ws_kites is None else opts.ws_kites,
                pin=opts.pin == "split", py_spy=opts.py_spy)
    if plan.py_spy is not None:
        plan.py_spy.mkdir(parents=True, exist_ok=True)
    if "etcd" in storages and not (shutil.which("etcd") or os.access("/usr/bin/etcd", os.X_OK)):
        sys.exit("etcd is not installed (apt-get install etcd-server, or `make deps`)")

    common_cpus()  # before pinning
    atexit.register(_remove_scratch)  # registered first: runs after common's stop_all
    common.install_cleanup()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, functools.partial(_cleanup_then, signal.getsignal(sig)))
    common.raise_fd_limit()
    pinning = common.pin_cpus("split" if plan.pin else "none")
    if plan.pin:
        pinning += ", etcd not pinned"
    started = time.perf_counter()
    rows: list[Row] = []
    lost_any = False
    for kind in storages:
        scratch = scratch_dir()
        try:
            storage_rows, lost = run_storage(kind, plan, scratch)
        except Exception as e:
            common.progress(f"[{kind}] failed: {e!r}")
            storage_rows, lost = [Row(kind, "run", f"FAILED: {e!r}"[:300], "", False)], True
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        rows += storage_rows
        lost_any = lost_any or lost

    t = plan.timings
    table = common.Table(["storage", "measurement", "value", "target", "verdict"])
    for r in rows:
        table.add(r.storage, r.measurement, r.value, r.target, "" if r.ok is None else ("ok" if r.ok else "MISS"))
    machine = common.machine_info(None).replace(", node -, kite.js -", "")
    print(f"Kontrol scale benchmark{' (--quick)' if quick else ''}: {kites:,} HTTP kites, 127.0.0.1, "
          f"{time.perf_counter() - started:.0f} s total\n{machine}, etcd {etcd_version()} (data on tmpfs); {pinning}\n"
          f"registry: heartbeat {t['heartbeat_interval']:g} s, update {t['update_interval']:g} s, "
          f"key TTL {t['key_ttl']:g} s; {WORKERS} client processes; getKites: {plan.getkites_calls:,} sequential "
          f"calls per run on one connection, the {len(QUERY_FORMS)} query forms in turn\n")
    print(table.render())
    if lost_any:
        print("\n! a kite was lost (or a storage run failed): see the rows above")
    return 1 if lost_any else 0


if __name__ == "__main__":
    sys.exit(main())
