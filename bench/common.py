"""Plumbing shared by the benchmark scripts in ``bench/``.

* child processes: every one is registered, dies with its parent (``PR_SET_PDEATHSIG``)
  and is stopped on exit, on errors and on Ctrl-C / SIGTERM (:func:`install_cleanup`);
  servers and clients are pinned to CPUs (:func:`pin_cpus`);
* :class:`Server` (a subprocess that prints ``READY ...``) and :class:`Servers`, the
  lazily started set the benchmarks share (Python kite, Python echo, kite.js);
* load generators: :func:`run_load` (greenlets calling a function), :func:`run_pipeline`
  (one greenlet keeping a window of messages in flight; :func:`pipeline_stats` on a fresh
  connection), :func:`run_node_client` (kite.js ``client.js --bench``);
* statistics (:class:`Stats`, nearest-rank percentiles, median and spread), the one
  :class:`Table` and the machine line;
* the options, clean-up and pinning of the scripts that run alternating rounds
  (:func:`alternating_setup`) and the lines above their table (:func:`alternating_header`).

Every script imports this module after ``monkey.patch_all()``; importing it puts the
working tree first on ``sys.path``, so the checkout is benchmarked, installed or not.
"""

from __future__ import annotations

import argparse
import atexit
import ctypes
import json
import math
import os
import platform
import random
import resource
import shutil
import signal
import statistics
import string
import subprocess
import sys
import tempfile
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import gevent

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
BENCH_DIR = ROOT / "bench"
SERVERS_SCRIPT = BENCH_DIR / "servers.py"
KITEJS_DIR = ROOT / "tests" / "interop" / "kitejs"
HOST = "127.0.0.1"
#: One load run must never hang the whole benchmark (seconds).
RUN_TIMEOUT = 120.0
#: Seconds a server gets to print its READY line.
START_TIMEOUT = 20.0
#: Transports as the tables name them -> (which server URL, ``transport=`` of a Python client).
TRANSPORTS = {
    "sockjs-websocket": ("sockjs", "websocket"),
    "raw-websocket": ("raw", None),
    "xhr-polling": ("sockjs", "xhr_polling"),
}
#: kite.js client.js options per transport.
NODE_TRANSPORT_ARGS = {
    "sockjs-websocket": ["--sockjs-transports", "websocket"],
    "raw-websocket": [],
    "xhr-polling": ["--sockjs-transports", "xhr-polling"],
}


# --------------------------------------------------------------------------- child processes

_children: list[subprocess.Popen] = []

try:
    _libc: Any = ctypes.CDLL(None, use_errno=True)
    _PR_SET_PDEATHSIG = 1
except OSError:  # not Linux: children are still stopped by the cleanup handlers
    _libc = None


PIN_MODES = ("same", "split", "none")
#: CPUs for server and client processes (see :func:`pin_cpus`); empty: not pinned.
_cpus: dict[str, set[int]] = {"server": set(), "client": set()}


def pin_cpus(mode: str) -> str:
    """Pin servers and clients (this process included) to CPUs; returns a note for the machine line.

    ``same``: everything on the first allowed CPU; ``split``: servers on the first,
    clients on the second; ``none``: wherever the scheduler puts them. With one call in
    flight, a round trip between CPUs pays a cross-CPU wake-up (tens of microseconds on
    a VM, more than the work measured), and where the scheduler happens to place the
    processes changes the figures 2-3x from run to run; on one CPU a round trip is two
    context switches and runs repeat within a few percent.
    """
    allowed = sorted(os.sched_getaffinity(0))
    if mode == "none":
        return "processes not pinned"
    if mode == "split" and len(allowed) < 2:
        mode = "same"
    server, client = allowed[0], allowed[0] if mode == "same" else allowed[1]
    _cpus["server"], _cpus["client"] = {server}, {client}
    os.sched_setaffinity(0, _cpus["client"])
    if mode == "same":
        return f"all processes pinned to CPU {server}"
    return f"servers pinned to CPU {server}, clients to CPU {client}"


def _child_setup(cpus: set[int]) -> Callable[[], None]:
    """A ``preexec_fn``: pin to ``cpus``; SIGTERM when this process dies, even by SIGKILL."""

    def setup() -> None:
        if cpus:
            os.sched_setaffinity(0, cpus)
        if _libc is not None:
            _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)

    return setup


def spawn(cmd: Sequence[str], cwd: Path = ROOT, role: str = "client", **kwargs: Any) -> subprocess.Popen:
    """Start a registered child process (stopped by :func:`stop_all`); ``role``: server or client."""
    proc = subprocess.Popen(list(cmd), cwd=str(cwd), preexec_fn=_child_setup(_cpus[role]), **kwargs)
    _children.append(proc)
    return proc


def stop(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    """SIGTERM ``proc``, SIGKILL it after ``timeout`` seconds, reap it, close its pipes."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    for pipe in (proc.stdin, proc.stdout, proc.stderr):
        if pipe is not None:
            try:
                pipe.close()
            except OSError:
                pass
    if proc in _children:
        _children.remove(proc)


def adopt(proc: subprocess.Popen) -> None:
    """Register a child process started elsewhere, so that :func:`stop_all` and the signal handlers stop it too."""
    _children.append(proc)


def stop_all() -> None:
    """Stop every child still running, newest first."""
    for proc in reversed(list(_children)):
        stop(proc)


def terminate_all() -> None:
    """SIGTERM every child still running, without waiting for it (safe in a signal handler)."""
    for proc in list(_children):
        if proc.poll() is None:
            proc.terminate()


def _on_signal(signum: int, _frame: Any) -> None:
    """SIGINT / SIGTERM / SIGHUP: SIGTERM every child, then exit at once (from any greenlet)."""
    terminate_all()
    print(f"\ninterrupted by signal {signum}; child processes stopped", file=sys.stderr, flush=True)
    os._exit(128 + signum)


def install_cleanup() -> None:
    """Stop all children at exit and on SIGINT / SIGTERM / SIGHUP."""
    atexit.register(stop_all)
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _on_signal)


def raise_fd_limit() -> int:
    """Raise this process's RLIMIT_NOFILE soft limit to the hard limit; return the new limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


def rss_kib(pid: int) -> int:
    """Resident set size of process ``pid`` in KiB (``VmRSS`` of ``/proc/PID/status``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """CPU time the threads of process ``pid`` have used so far, to the nanosecond.

    Summed from ``/proc/PID/task/*/schedstat`` (``/proc/PID/stat`` counts 10 ms ticks,
    too coarse for short runs).
    """
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError, IndexError):  # the thread just ended
            pass
    return total / 1e9


def _stderr_file(name: str) -> Any:
    """Where a server's stderr goes: a temporary file, or a kept one in ``$BENCH_LOGS``."""
    logs = os.environ.get("BENCH_LOGS")
    if not logs:
        return tempfile.TemporaryFile()
    Path(logs).mkdir(parents=True, exist_ok=True)
    stem = "".join(c if c.isalnum() else "-" for c in name)
    n = 1
    while (Path(logs) / f"{stem}-{n}.log").exists():
        n += 1
    return open(Path(logs) / f"{stem}-{n}.log", "w+b")  # noqa: SIM115 -- closed by stop()


class Server:
    """A server subprocess whose first stdout line is ``READY <details>``.

    Its stderr goes to a temporary file, quoted when it fails to start -- or, with the variable
    ``BENCH_LOGS`` set to a directory, to a file there that is kept (``<name>-<n>.log``); ``env``:
    its environment (default: this process's).
    """

    def __init__(self, cmd: Sequence[str], cwd: Path, name: str, env: dict[str, str] | None = None):
        self.name = name
        self._stderr = _stderr_file(name)
        self.proc = spawn(cmd, cwd, "server", stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=self._stderr, env=env)
        line = b""
        with gevent.Timeout(START_TIMEOUT, False):
            line = self.proc.stdout.readline()
        ready = line.decode(errors="replace").strip()
        if not ready.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{self.name} did not start (got {ready!r}); stderr: {self.stderr_tail()}")
        #: What follows ``READY `` (a port, or kite.js' JSON).
        self.ready = ready[len("READY ") :]

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def stderr_tail(self, size: int = 600) -> str:
        self._stderr.seek(0, os.SEEK_END)
        self._stderr.seek(max(0, self._stderr.tell() - size))
        return self._stderr.read().decode(errors="replace").strip()

    def stop(self) -> None:
        stop(self.proc)
        self._stderr.close()


def python_server(kind: str) -> Server:
    """``bench/servers.py KIND``: a Python server in its own process."""
    return Server([sys.executable, str(SERVERS_SCRIPT), kind], ROOT, f"python {kind} server")


def node_binary() -> str:
    """The ``node`` executable; exits with a hint when node or kite.js is missing."""
    node = shutil.which("node")
    if node is None:
        sys.exit("node is not on PATH (the kite.js rows need Node.js)")
    if not (KITEJS_DIR / "node_modules" / "kite.js").is_dir():
        sys.exit(f"kite.js is not installed: run `make deps` (or `cd {KITEJS_DIR} && npm ci`)")
    return node


class Servers:
    """The servers a benchmark needs, each started on first use and stopped by :meth:`stop`.

    ``url(side, kind)``: side ``python`` (the bench kite), ``echo`` (the Python echo
    server) or ``kite.js``; kind ``sockjs`` (``http://.../kite``) or ``raw``
    (``ws://...``); the echo server also has ``bare`` (``ws://.../ws``, no SockJS) and
    ``blob`` (``ws://.../blob``).
    """

    def __init__(self, node: str | None = None):
        self.node = node
        self._running: dict[str, Server] = {}

    def _get(self, key: str) -> Server:
        server = self._running.get(key)
        if server is None:
            if key == "python":
                server = python_server("kite")
            elif key == "echo":
                server = python_server("echo")
            elif key == "kite.js sockjs":
                server = Server([self.node_path(), "server.js", "0", "--host", HOST], KITEJS_DIR, "kite.js server")
            else:  # "kite.js raw": kite.js' plain `ws` server
                cmd = [self.node_path(), "server.js", "0", "--transport", "ws", "--host", HOST]
                server = Server(cmd, KITEJS_DIR, "kite.js ws server")
            self._running[key] = server
        return server

    def node_path(self) -> str:
        """The ``node`` executable (looked up on first use)."""
        if self.node is None:
            self.node = node_binary()
        return self.node

    def pid(self, side: str, kind: str) -> int:
        """The process id of the server behind ``url(side, kind)``."""
        return self._get(f"kite.js {kind}" if side == "kite.js" else side).pid

    def url(self, side: str, kind: str) -> str:
        """The URL of ``side``'s ``kind`` endpoint, starting its server if need be."""
        if side == "kite.js":
            return json.loads(self._get(f"kite.js {kind}").ready)["url"]
        port = int(self._get(side).ready)
        return {
            "sockjs": f"http://{HOST}:{port}/kite",
            "raw": f"ws://{HOST}:{port}/kite/websocket",
            "bare": f"ws://{HOST}:{port}/ws",
            "blob": f"ws://{HOST}:{port}/blob",
        }[kind]

    def stop(self) -> None:
        for server in self._running.values():
            server.stop()
        self._running.clear()


# --------------------------------------------------------------------------- payloads

_ALPHABET = string.ascii_letters + string.digits


@lru_cache(maxsize=8)
def payload_text(size: int) -> str:
    """A reproducible ``size``-character string of letters and digits (nothing JSON must escape)."""
    return "".join(random.Random(size).choices(_ALPHABET, k=size))


# --------------------------------------------------------------------------- statistics


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (the same rule as client.js)."""
    if not sorted_values:
        return None
    i = min(len(sorted_values) - 1, max(0, math.ceil(p / 100 * len(sorted_values)) - 1))
    return sorted_values[i]


@dataclass
class Stats:
    """One load run: ``calls`` calls in ``seconds``; latencies in milliseconds."""

    calls: int = 0
    seconds: float = 0.0
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    note: str = ""
    #: CPU time the server process used per call (warm-up and connecting included), microseconds.
    server_cpu_us: float | None = None

    @property
    def rate(self) -> float | None:
        """Calls per second (``None`` when the run failed)."""
        if self.errors >= self.calls or self.seconds <= 0:
            return None
        return self.calls / self.seconds

    @classmethod
    def failed(cls, calls: int, why: str) -> Stats:
        return cls(calls=calls, errors=max(1, calls), note=why)

    @classmethod
    def from_latencies(cls, latencies_s: list[float], seconds: float, errors: int = 0, note: str = "") -> Stats:
        ms = sorted(x * 1000 for x in latencies_s)
        return cls(len(latencies_s), seconds, percentile(ms, 50), percentile(ms, 99), errors, note)


def median_spread(values: Sequence[float | None]) -> tuple[float | None, float | None, float | None]:
    """``(median, min, max)`` of the values that are not ``None``."""
    good = [v for v in values if v is not None]
    if not good:
        return None, None, None
    return statistics.median(good), min(good), max(good)


def calls_for(rate: float | None, seconds: float, minimum: int = 50, maximum: int = 2_000_000) -> int:
    """How many calls take about ``seconds`` at ``rate`` calls/s."""
    if not rate:
        return minimum
    return max(minimum, min(maximum, int(rate * seconds)))


@dataclass
class Contender:
    """One configuration of a side-by-side comparison, and its runs.

    ``measure(n, warmup)`` runs ``n`` timed calls after ``warmup`` untimed ones; use it
    through :meth:`run`, which also takes the server's CPU time per call.
    :func:`alternate` sizes ``n`` from a ``probe``-call run, then runs every contender
    once per round, in turn, so slow drifts of a noisy machine hit all of them alike.
    """

    group: str
    pair: str
    transport: str
    scenario: str
    measure: Callable[[int, int], Stats] | None = None
    probe: int = 200
    #: The server process, whose CPU time per call :meth:`run` records.
    server_pid: int | None = None
    n: int = 0
    runs: list[Stats] = field(default_factory=list)
    note: str = ""

    def _each(self, attr: str) -> list[float | None]:
        return [getattr(s, attr) if not s.errors else None for s in self.runs]

    def run(self, n: int, warmup: int) -> Stats:
        """``measure(n, warmup)``, plus the server's CPU time per call when its pid is known."""
        before = cpu_seconds(self.server_pid) if self.server_pid else None
        stats = self.measure(n, warmup)
        if before is not None and not stats.errors:
            stats.server_cpu_us = (cpu_seconds(self.server_pid) - before) / (n + warmup) * 1e6
        return stats

    def server_cpu(self) -> float | None:
        """Median server CPU microseconds per call."""
        return median_spread([s.server_cpu_us for s in self.runs])[0]

    def rate(self) -> tuple[float | None, float | None, float | None]:
        """Median, min and max calls/s over the runs."""
        return median_spread([s.rate for s in self.runs])

    def p50(self) -> float | None:
        return median_spread(self._each("p50_ms"))[0]

    def p99(self) -> tuple[float | None, float | None, float | None]:
        return median_spread(self._each("p99_ms"))

    def failures(self) -> list[Stats]:
        return [s for s in self.runs if s.errors]


def alternate(contenders: Sequence[Contender], rounds: int, seconds: float, label: str = "") -> None:
    """Size every contender's runs to ~``seconds`` each, then run ``rounds`` alternating rounds."""
    for c in contenders:
        probe = c.run(c.probe, max(1, c.probe // 10))
        c.n = calls_for(probe.rate, seconds, minimum=min(50, c.probe))
    for r in range(rounds):
        for c in contenders:
            c.runs.append(c.run(c.n, max(1, c.n // 10)))
        summary = "  ".join(f"{fmt(c.runs[-1].rate)}" for c in contenders)
        progress(f"  {label} round {r + 1}/{rounds}: {summary}")


def ratio_runs(a: Contender, b: Contender, attr: str = "rate") -> tuple[float | None, float | None, float | None]:
    """Median, min and max over the rounds of ``a / b``, run by run, for a :class:`Stats` attribute."""
    ratios = []
    for x, y in zip(a.runs, b.runs, strict=False):
        vx, vy = getattr(x, attr), getattr(y, attr)
        ratios.append(vx / vy if vx and vy else None)
    return median_spread(ratios)


# --------------------------------------------------------------------------- load generators


def run_load(targets: Sequence[Any], call: Callable[[Any], Any], conc: int, n: int, warmup: int = 0) -> Stats:
    """``n`` calls of ``call(target)``: ``conc`` greenlets per target, each one call at a time.

    ``warmup`` calls run first, untimed. Latency is timed per call with ``perf_counter``.
    """
    state = {"next": 0, "errors": 0, "first_error": ""}
    latencies: list[float] = []

    def worker(target: Any, count: int, record: bool) -> None:
        while state["next"] < count:
            state["next"] += 1
            t0 = time.perf_counter()
            try:
                call(target)
            except Exception as e:
                state["errors"] += 1
                state["first_error"] = state["first_error"] or repr(e)
                continue
            if record:
                latencies.append(time.perf_counter() - t0)

    def run(count: int, record: bool) -> float:
        state["next"] = 0
        jobs = [gevent.spawn(worker, t, count, record) for t in targets for _ in range(conc)]
        t0 = time.perf_counter()
        done = gevent.joinall(jobs, timeout=RUN_TIMEOUT)
        elapsed = time.perf_counter() - t0
        if len(done) != len(jobs):
            gevent.killall(jobs)
            state["errors"] += count - len(latencies)
            state["first_error"] = state["first_error"] or f"timed out after {RUN_TIMEOUT:.0f} s"
        return elapsed

    if warmup:
        run(warmup, False)
        state["errors"], state["first_error"] = 0, ""
    elapsed = run(n, True)
    stats = Stats.from_latencies(latencies, elapsed, state["errors"], state["first_error"])
    stats.calls = n
    return stats


def run_pipeline(send: Callable[[str], Any], recv: Callable[[], str | None], text: str, window: int, n: int,
                 reply_size: int | None = None) -> Stats:
    """Send ``text`` ``n`` times keeping ``window`` messages in flight, from ONE greenlet.

    Replies come back in order on one connection, so a FIFO of send times gives each
    message's round trip. Every reply must be ``reply_size`` characters long
    (default: ``len(text)``, an echo).
    """
    expected = len(text) if reply_size is None else reply_size
    sent_at: deque[float] = deque()
    latencies: list[float] = []
    clock = time.perf_counter
    sent = 0
    with gevent.Timeout(RUN_TIMEOUT, TimeoutError(f"pipeline timed out after {RUN_TIMEOUT:.0f} s")):
        t0 = clock()
        while sent < min(window, n):
            sent_at.append(clock())
            send(text)
            sent += 1
        while len(latencies) < n:
            reply = recv()
            now = clock()
            if reply is None:
                raise ConnectionError(f"connection closed after {len(latencies)} of {n} replies")
            if len(reply) != expected:
                raise ValueError(f"reply of {len(reply)} characters, expected {expected}")
            latencies.append(now - sent_at.popleft())
            if sent < n:
                sent_at.append(clock())
                send(text)
                sent += 1
        elapsed = clock() - t0
    return Stats.from_latencies(latencies, elapsed)


#: What a :func:`pipeline_stats` ``connect()`` returns: the connection's send, recv and close.
Link = tuple[Callable[[str], Any], Callable[[], str | None], Callable[[], Any]]


def pipeline_stats(connect: Callable[[], Link], text: str, window: int, n: int, warmup: int,
                   reply_size: int | None = None) -> Stats:
    """:func:`run_pipeline` on a fresh connection: ``warmup`` untimed messages, then ``n`` timed ones.

    ``connect()`` opens the connection and returns its ``(send, recv, close)``; it is closed
    in any case. A failure to connect or while sending becomes a failed :class:`Stats`.
    """
    try:
        send, recv, close = connect()
    except Exception as e:
        return Stats.failed(n, repr(e))
    try:
        run_pipeline(send, recv, text, window, warmup, reply_size)
        return run_pipeline(send, recv, text, window, n, reply_size)
    except Exception as e:
        return Stats.failed(n, repr(e))
    finally:
        close()


@contextmanager
def kite_clients(url: str, transport: str, conns: int = 1) -> Iterator[list[Any]]:
    """``conns`` dialed kite clients of ``url`` over ``transport`` (a :data:`TRANSPORTS` key)."""
    from kite import Kite

    local = Kite("bench", "1.0.0")
    clients = [local.new_client(url, transport=TRANSPORTS[transport][1]) for _ in range(conns)]
    try:
        for c in clients:
            c.dial_timeout(10)
        yield clients
    finally:
        for c in clients:
            c.close()
        local.close()


def run_kite_calls(url: str, transport: str, call: Callable[[Any], Any], conns: int, conc: int, n: int,
                   warmup: int) -> Stats:
    """:func:`run_load` over fresh kite clients; a failure becomes a failed :class:`Stats`."""
    try:
        with kite_clients(url, transport, conns) as clients:
            return run_load(clients, call, conc, n, warmup)
    except Exception as e:
        return Stats.failed(n, repr(e))


def run_node_client(node: str, url: str, transport: str, method: str, args_json: str, conns: int, conc: int,
                    n: int, warmup: int) -> Stats:
    """``node client.js URL METHOD ARGS --bench n --conc conc --conns conns`` (kite.js 1.0.13)."""
    cmd = [node, str(KITEJS_DIR / "client.js"), url, method, args_json, "--bench", str(n), "--conc", str(conc),
           "--conns", str(conns), "--warmup", str(warmup), "--timeout", str(int(RUN_TIMEOUT * 1000)),
           *NODE_TRANSPORT_ARGS[transport]]
    proc = spawn(cmd, KITEJS_DIR, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        stdout, stderr = proc.communicate(timeout=RUN_TIMEOUT + 10)
    except subprocess.TimeoutExpired:
        return Stats.failed(n, f"client.js timed out after {RUN_TIMEOUT + 10:.0f} s")
    finally:
        stop(proc)
    try:
        out = json.loads(stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        return Stats.failed(n, f"client.js rc={proc.returncode}: {stdout[-200:]!r} {stderr[-300:]!r}")
    if not isinstance(out, dict) or not out.get("bench"):
        return Stats.failed(n, f"client.js rc={proc.returncode}: {out}")
    note = json.dumps(out["first_error"]) if out.get("first_error") else ""
    return Stats(out["n"], out["seconds"], out["p50_ms"], out["p99_ms"], out["errors"], note)


# --------------------------------------------------------------------------- output


def fmt(v: float | None, digits: int = 0) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def fmt_spread(lo: float | None, hi: float | None, digits: int = 0) -> str:
    return "" if lo is None or hi is None else f"{fmt(lo, digits)}–{fmt(hi, digits)}"


def progress(text: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    print(text, file=sys.stderr, flush=True)


class Table:
    """A plain-text table; columns whose name is in ``right`` are right-aligned."""

    def __init__(self, columns: Sequence[str], right: Sequence[str] = ()):
        self.columns = list(columns)
        self.right = {self.columns.index(c) for c in right}
        self.rows: list[list[str]] = []

    def add(self, *cells: str) -> None:
        self.rows.append([str(c) for c in cells])

    def render(self) -> str:
        widths = [max(len(c), *(len(r[i]) for r in self.rows)) if self.rows else len(c)
                  for i, c in enumerate(self.columns)]

        def line(cells: Sequence[str]) -> str:
            padded = (c.rjust(w) if i in self.right else c.ljust(w)
                      for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
            return "  ".join(padded).rstrip()

        return "\n".join([line(self.columns), line(["-" * w for w in widths]), *(line(r) for r in self.rows)])


def contender_table(contenders: Sequence[Contender], group: bool = False, spread: bool = True,
                    extra: dict[str, Callable[[Contender], str]] | None = None) -> Table:
    """A table with one row per contender: median calls/s (and min–max over its runs), median
    p50 / p99, median server CPU per call, the ``extra`` columns, and the notes if any."""
    extra = dict(extra or {})
    if any(c.note for c in contenders):
        extra["note"] = lambda c: c.note
    numeric = ["calls/s", *(["min–max"] if spread else []), "p50 ms", "p99 ms", "srv µs/call"]
    table = Table([*(["group"] if group else []), "pair", "transport", "scenario", *numeric, *extra],
                  right=numeric + [name for name in extra if name != "note"])
    for c in contenders:
        med, lo, hi = c.rate()
        cells = [*([c.group] if group else []), c.pair, c.transport, c.scenario, fmt(med)]
        if spread:
            cells.append(fmt_spread(lo, hi) if len(c.runs) > 1 else "")
        cells += [fmt(c.p50(), 3), fmt(c.p99()[0], 3), fmt(c.server_cpu(), 1)]
        if not c.runs:  # a row of notes only
            cells[len(cells) - len(numeric):] = [""] * len(numeric)
        table.add(*cells, *(cell(c) for cell in extra.values()))
    return table


def report_failures(contenders: Sequence[Contender]) -> int:
    """Print a ``!`` line per failed run; return how many there were."""
    failed = [(c, s) for c in contenders for s in c.failures()]
    for c, s in failed:
        print(f"! {c.group} / {c.pair} / {c.transport} / {c.scenario}: {s.errors} errors; first: {s.note}")
    return len(failed)


# --------------------------------------------------------------------------- script set-up


def alternating_setup(doc: str, seconds: float, quick_seconds: float, rounds: int) -> tuple[int, float, str]:
    """Set up a script that runs contenders in alternating rounds; returns ``(rounds, seconds, pinning)``.

    Parses ``[--seconds S] [--rounds R] [--quick] [--pin MODE]`` (described by ``doc``'s first
    paragraph; ``seconds`` per run by default, ``quick_seconds`` with ``--quick``, ``rounds``
    rounds), then :func:`install_cleanup` and :func:`pin_cpus`; ``pinning`` is the latter's note.
    """
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None,
                    help=f"seconds per run (default {seconds:g}; {quick_seconds:g} with --quick)")
    ap.add_argument("--rounds", type=int, default=rounds, help=f"alternating rounds (default {rounds})")
    ap.add_argument("--quick", action="store_true", help="short runs, for a smoke run")
    ap.add_argument("--pin", choices=PIN_MODES, default="same", help="CPU pinning (default: same)")
    opts = ap.parse_args()
    install_cleanup()
    return opts.rounds, opts.seconds or (quick_seconds if opts.quick else seconds), pin_cpus(opts.pin)


def alternating_header(title: str, rounds: int, seconds: float, node: str | None, pinning: str) -> str:
    """What stands above the table of an :func:`alternating_setup` script: the runs, the machine, the pinning."""
    return f"{title}: medians of {rounds} alternating runs of ~{seconds:g} s\n{machine_info(node)}; {pinning}\n"


def machine_info(node: str | None) -> str:
    """CPU model, cores, OS, python / gevent / node / kite.js versions and the date."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    node_version = kitejs = "-"
    if node is not None:
        node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
        try:
            kitejs = json.loads((KITEJS_DIR / "node_modules" / "kite.js" / "package.json").read_text())["version"]
        except (OSError, ValueError, KeyError):
            kitejs = "?"
    return (f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}, "
            f"{time.strftime('%Y-%m-%d %H:%M:%S %Z')}\n"
            f"python {platform.python_version()} ({platform.python_implementation()}), "
            f"gevent {gevent.__version__}, node {node_version}, kite.js {kitejs}")
