"""Benchmark: ``square`` calls per second and latency, kite for Python next to kite.js.

    .venv/bin/python bench/bench_square.py [--calls N] [--quick] [--only TEXT]

Starts every server itself (all on 127.0.0.1, free ports) and prints ONE table:

* pairs: python -> python, kite.js -> python, python -> kite.js, kite.js -> kite.js
  (kite.js = npm kite.js@1.0.13 via tests/interop/kitejs/{client,server}.js; run
  ``make deps`` or ``npm ci`` there first);
* transports: SockJS websocket, raw websocket (Python: ``/kite/websocket``; kite.js: its
  plain ``ws`` server), SockJS XHR polling;
* scenarios: 1 call in flight on one connection, 16 in flight on one connection, 16
  connections with 1 in flight each.

The Python server runs in its own process (this script with ``--serve``), so client and
server never share one interpreter. Latency is measured per call with
``time.perf_counter`` (Python) / ``process.hrtime`` (node); p50/p99 are nearest-rank
percentiles. XHR polling rows use a twentieth of the calls (each call is an HTTP round
trip, and kite.js' node client needs ~26 ms per polling call whatever the server).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import shutil  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# benchmark the working tree, installed or not
sys.path.insert(0, str(ROOT))
KITEJS_DIR = ROOT / "tests" / "interop" / "kitejs"
SCENARIOS = {  # name -> (connections, calls in flight per connection)
    "1 in flight": (1, 1),
    "16 in flight": (1, 16),
    "16 conns": (16, 1),
}
TRANSPORTS = ("sockjs-websocket", "raw-websocket", "xhr-polling")
PAIRS = ("python → python", "kite.js → python", "python → kite.js", "kite.js → kite.js")
#: one run must never hang the whole benchmark
RUN_TIMEOUT = 120.0


# --------------------------------------------------------------------------- Python server process


def serve() -> None:
    """``--serve``: run the math kite on 127.0.0.1:0, print ``READY <port>``, run until SIGTERM."""
    from kite import Kite

    k = Kite("math", "1.0.0")
    k.config.ip = "127.0.0.1"
    k.config.port = 0
    k.config.disable_authentication = True
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    g = gevent.spawn(k.run)
    if not k.server_ready_notify().wait(10):
        sys.exit("the Python kite did not start")
    print(f"READY {k.port}", flush=True)
    gevent.signal_handler(signal.SIGTERM, k.close)
    g.join()


# --------------------------------------------------------------------------- helpers


@dataclass
class Result:
    pair: str
    transport: str
    scenario: str
    calls: int = 0
    calls_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int = 0
    note: str = ""


def percentile(sorted_ms: list[float], p: float) -> float | None:
    """Nearest-rank percentile (the same rule as client.js)."""
    if not sorted_ms:
        return None
    i = min(len(sorted_ms) - 1, max(0, math.ceil(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[i]


class Proc:
    """A server subprocess whose first stdout line is ``READY ...``."""

    def __init__(self, cmd: list[str], cwd: Path):
        self.cmd = cmd
        self.proc = subprocess.Popen(cmd, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)
        line = b""
        with gevent.Timeout(20, False):
            line = self.proc.stdout.readline()
        self.ready = line.decode().strip()
        if not self.ready.startswith("READY "):
            self.stop()
            raise RuntimeError(f"{' '.join(cmd)} did not start (got {self.ready!r})")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        self.proc.stdout.close()


def node_binary() -> str:
    node = shutil.which("node")
    if node is None:
        sys.exit("node is not on PATH (the kite.js rows need Node.js)")
    if not (KITEJS_DIR / "node_modules" / "kite.js").is_dir():
        sys.exit(f"kite.js is not installed: run `make deps` (or `cd {KITEJS_DIR} && npm ci`)")
    return node


# --------------------------------------------------------------------------- clients


def bench_python_client(url: str, client_kwargs: dict, conns: int, conc: int, n: int, warmup: int) -> Result:
    """``n`` square calls from this process: ``conns`` connections x ``conc`` greenlets each."""
    from kite import Kite

    local = Kite("bench", "1.0.0")
    clients = [local.new_client(url, **client_kwargs) for _ in range(conns)]
    res = Result("", "", "")
    try:
        for c in clients:
            c.dial_timeout(10)
        latencies: list[float] = []
        state = {"next": 0, "errors": 0, "first_error": None}

        def worker(c, count: int, record: bool) -> None:
            while state["next"] < count:
                state["next"] += 1
                t0 = time.perf_counter()
                try:
                    c.tell("square", 3)
                except Exception as e:
                    state["errors"] += 1
                    state["first_error"] = state["first_error"] or repr(e)
                if record:
                    latencies.append(time.perf_counter() - t0)

        def run(count: int, record: bool) -> float:
            state["next"] = 0
            jobs = [gevent.spawn(worker, c, count, record) for c in clients for _ in range(conc)]
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
            state["errors"] = 0
            state["first_error"] = None
        elapsed = run(n, True)
        ms = sorted(x * 1000 for x in latencies)
        res.calls = n
        res.calls_per_s = n / elapsed if elapsed > 0 else None
        res.p50_ms = percentile(ms, 50)
        res.p99_ms = percentile(ms, 99)
        res.errors = state["errors"]
        res.note = state["first_error"] or ""
    finally:
        for c in clients:
            c.close()
        local.close()
    return res


def bench_node_client(node: str, url: str, extra: list[str], conns: int, conc: int, n: int,
                      warmup: int) -> Result:
    """``node client.js URL square [3] --bench n --conc conc --conns conns``."""
    cmd = [node, str(KITEJS_DIR / "client.js"), url, "square", "[3]", "--bench", str(n), "--conc", str(conc),
           "--conns", str(conns), "--warmup", str(warmup), "--timeout", str(int(RUN_TIMEOUT * 1000)), *extra]
    proc = subprocess.run(cmd, cwd=str(KITEJS_DIR), stdin=subprocess.DEVNULL, capture_output=True,
                          timeout=RUN_TIMEOUT + 10)
    res = Result("", "", "")
    try:
        out = json.loads(proc.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        res.errors = n
        res.note = f"client.js rc={proc.returncode}: {proc.stdout[-200:]!r} {proc.stderr[-300:]!r}"
        return res
    if not out.get("bench"):
        res.errors = n
        res.note = f"client.js rc={proc.returncode}: {out}"
        return res
    res.calls = out["n"]
    res.calls_per_s = out["calls_per_s"]
    res.p50_ms = out["p50_ms"]
    res.p99_ms = out["p99_ms"]
    res.errors = out["errors"]
    res.note = json.dumps(out["first_error"]) if out.get("first_error") else ""
    return res


# --------------------------------------------------------------------------- main


def machine_info(node: str) -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    node_version = subprocess.run([node, "--version"], capture_output=True, text=True).stdout.strip()
    try:
        kitejs = json.loads((KITEJS_DIR / "node_modules" / "kite.js" / "package.json").read_text())["version"]
    except (OSError, ValueError, KeyError):
        kitejs = "?"
    return (f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.release()}\n"
            f"python {platform.python_version()} ({platform.python_implementation()}), "
            f"gevent {gevent.__version__}, node {node_version}, kite.js {kitejs}")


def fmt(v: float | None, digits: int) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def print_table(results: list[Result], header: str) -> None:
    cols = ("pair", "transport", "scenario", "calls/s", "p50 ms", "p99 ms")
    rows = [(r.pair, r.transport, r.scenario, fmt(r.calls_per_s, 0), fmt(r.p50_ms, 3), fmt(r.p99_ms, 3))
            for r in results]
    widths = [max(len(c), *(len(row[i]) for row in rows)) for i, c in enumerate(cols)]
    right = {3, 4, 5}

    def line(cells):
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    print(header)
    print(line(cols))
    print(line(["-" * w for w in widths]))
    for row in rows:
        print(line(row))
    failed = [r for r in results if r.errors]
    for r in failed:
        print(f"! {r.pair} / {r.transport} / {r.scenario}: {r.errors} errors; first: {r.note}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=None, help="calls per row (default 4000; 300 with --quick)")
    ap.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    ap.add_argument("--only", default="", help="run only rows whose 'pair transport scenario' contains this")
    ap.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.serve:
        serve()
        return 0

    node = node_binary()
    n_ws = opts.calls or (300 if opts.quick else 4000)
    n_xhr = max(32, n_ws // 20)
    started = time.perf_counter()

    rows = [(p, t, s) for p in PAIRS for t in TRANSPORTS for s in SCENARIOS
            if opts.only in f"{p} {t} {s}"]
    need_py = any(p.endswith("python") for p, _, _ in rows)
    need_js = any(p.endswith("kite.js") for p, _, _ in rows)

    servers: list[Proc] = []
    results: list[Result] = []
    try:
        urls: dict[tuple[str, str], str] = {}
        if need_py:
            py = Proc([sys.executable, str(Path(__file__).resolve()), "--serve"], ROOT)
            servers.append(py)
            port = int(py.ready.split()[1])
            urls["python", "sockjs"] = f"http://127.0.0.1:{port}/kite"
            urls["python", "raw"] = f"ws://127.0.0.1:{port}/kite/websocket"
        if need_js:
            js = Proc([node, "server.js", "0", "--host", "127.0.0.1"], KITEJS_DIR)
            servers.append(js)
            urls["kite.js", "sockjs"] = json.loads(js.ready[len("READY "):])["url"]
            jsws = Proc([node, "server.js", "0", "--transport", "ws", "--host", "127.0.0.1"], KITEJS_DIR)
            servers.append(jsws)
            urls["kite.js", "raw"] = json.loads(jsws.ready[len("READY "):])["url"]

        for pair, transport, scenario in rows:
            client_side, server_side = (x.strip() for x in pair.split("→"))
            conns, conc = SCENARIOS[scenario]
            n = n_xhr if transport == "xhr-polling" else n_ws
            warmup = max(conns * conc, n // 10)
            url = urls[server_side, "raw" if transport == "raw-websocket" else "sockjs"]
            try:
                if client_side == "python":
                    kwargs = {"sockjs-websocket": {"transport": "websocket"}, "raw-websocket": {},
                              "xhr-polling": {"transport": "xhr_polling"}}[transport]
                    r = bench_python_client(url, kwargs, conns, conc, n, warmup)
                else:
                    extra = {"sockjs-websocket": ["--sockjs-transports", "websocket"], "raw-websocket": [],
                             "xhr-polling": ["--sockjs-transports", "xhr-polling"]}[transport]
                    r = bench_node_client(node, url, extra, conns, conc, n, warmup)
            except Exception as e:
                r = Result("", "", "", errors=n, note=repr(e))
            r.pair, r.transport, r.scenario = pair, transport, scenario
            results.append(r)
            print(f"  {pair:18} {transport:17} {scenario:13} {fmt(r.calls_per_s, 0):>8} calls/s"
                  f"{'  (' + str(r.errors) + ' errors)' if r.errors else ''}", file=sys.stderr, flush=True)
    finally:
        for s in servers:
            s.stop()

    header = (f"kite square benchmark: {n_ws} calls per row ({n_xhr} for xhr-polling), "
              f"127.0.0.1, {time.perf_counter() - started:.0f} s total\n{machine_info(node)}\n")
    print_table(results, header)
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
