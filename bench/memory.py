"""Memory of a serving kite: RSS per idle connection, and RSS over many calls.

    .venv/bin/python bench/memory.py [--conns 1000,10000] [--calls N] [--quick]

Both parts use a fresh bench kite (``bench/servers.py kite``) and read its RSS from
``/proc/PID/status`` (``VmRSS``):

* idle connections: after a short warm-up (a few connections and calls, so lazy imports
  and caches are in the baseline), client processes (``memory.py --hold URL``, up to
  :data:`PER_PROCESS` connections each) open SockJS-websocket kite connections and make
  one ``square`` call on each, then stay idle. The server's RSS is read at each total
  (1k, then 10k); KiB per connection = (RSS - baseline) / connections. Server and client
  processes raise RLIMIT_NOFILE to the hard limit; a total that limit cannot hold is
  reduced (and says so).
* calls: one SockJS-websocket connection, 16 calls in flight; after 20k warm-up calls
  the RSS is read every 20% of the run (default 1M calls, the issue's figure).
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import math  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import bench_square  # noqa: E402
import common  # noqa: E402
import gevent  # noqa: E402
from gevent.fileobject import FileObjectPosix  # noqa: E402
from gevent.pool import Pool  # noqa: E402

#: Connections per client process.
PER_PROCESS = 2500
#: Dials in progress per client process (all of them stay below the server's listen backlog of 128).
DIAL_CONCURRENCY = 24
#: Seconds to wait after opening connections before reading the RSS.
SETTLE = 1.0
#: File descriptors the server keeps for itself besides connections.
SPARE_FDS = 200
#: Seconds a client process may take to open its share of connections.
OPEN_TIMEOUT = 180.0
#: Warm-up calls before the RSS-over-calls baseline.
WARMUP_CALLS = 20_000


# --------------------------------------------------------------------------- client process


def hold(url: str) -> None:
    """``--hold URL``: on each ``open K`` line from stdin open K more connections (one call each)
    and answer ``OPEN <total> <errors> <first error>``; exit at end of input."""
    common.raise_fd_limit()
    from kite import Kite

    local = Kite("idle", "1.0.0")
    clients = []
    failures: list[str] = []
    pool = Pool(DIAL_CONCURRENCY)

    def open_one() -> None:
        c = local.new_client(url, transport="websocket")
        try:
            c.dial_timeout(60)
            c.tell_with_timeout("square", 60, 3)
            clients.append(c)
        except Exception as e:
            failures.append(repr(e))
            c.close()

    stdin = FileObjectPosix(sys.stdin.fileno(), "rb", close=False)
    for line in stdin:
        words = line.split()
        if len(words) == 2 and words[0] == b"open":
            for _ in range(int(words[1])):
                pool.spawn(open_one)
            pool.join()
            first = failures[0] if failures else "-"
            print(f"OPEN {len(clients)} {len(failures)} {first}", flush=True)


class Holder:
    """A ``--hold`` client process and the connections it has open."""

    def __init__(self, url: str):
        self.proc = common.spawn([sys.executable, str(Path(__file__).resolve()), "--hold", url], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.held = 0
        self.errors = 0
        self.first_error = ""

    def ask(self, count: int) -> None:
        self.proc.stdin.write(f"open {count}\n".encode())
        self.proc.stdin.flush()

    def answer(self) -> None:
        line = b""
        with gevent.Timeout(OPEN_TIMEOUT, False):
            line = self.proc.stdout.readline()
        words = line.decode(errors="replace").split(" ", 3)
        if len(words) != 4 or words[0] != "OPEN":
            raise RuntimeError(f"client process answered {line[:200]!r}")
        self.held, self.errors = int(words[1]), int(words[2])
        self.first_error = words[3].strip() if self.errors else ""

    def stop(self) -> None:
        common.stop(self.proc)


# --------------------------------------------------------------------------- measurements


@dataclass
class IdlePoint:
    """The server at ``wanted`` idle connections (``opened`` of them succeeded)."""

    wanted: int
    opened: int
    rss_kib: int
    per_conn_kib: float | None
    seconds: float
    errors: int = 0
    note: str = ""


@dataclass
class IdleResult:
    base_kib: int = 0
    points: list[IdlePoint] = field(default_factory=list)
    after_close_kib: int | None = None


def fd_capacity() -> int:
    """Connections one process can hold: the hard RLIMIT_NOFILE minus spare descriptors."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return (1 << 20) if hard == resource.RLIM_INFINITY else max(0, hard - SPARE_FDS)


def idle_connections(totals: list[int]) -> IdleResult:
    """Server RSS at each total of idle SockJS-websocket connections (opened cumulatively)."""
    result = IdleResult()
    capacity = fd_capacity()
    server = common.python_server("kite")
    holders: list[Holder] = []
    try:
        url = f"http://{common.HOST}:{int(server.ready)}/kite"
        with common.kite_clients(url, "sockjs-websocket", 8) as clients:
            common.run_load(clients, bench_square.square, 1, 400)
        gevent.sleep(SETTLE)
        result.base_kib = server.rss_kib()
        for wanted in totals:
            target = min(wanted, capacity)
            per_process = min(PER_PROCESS, capacity)
            while len(holders) * per_process < target:
                holders.append(Holder(url))
            t0 = time.perf_counter()
            remaining = target - sum(h.held for h in holders)
            asked = []
            for h in holders:
                count = min(per_process - h.held, remaining)
                if count > 0:
                    h.ask(count)
                    asked.append(h)
                    remaining -= count
            for h in asked:
                h.answer()
            seconds = time.perf_counter() - t0
            gevent.sleep(SETTLE)
            rss = server.rss_kib()
            opened = sum(h.held for h in holders)
            errors = sum(h.errors for h in holders)
            note = f"fd limit allows {capacity}" if target < wanted else ""
            if errors:
                note = "; ".join(filter(None, [note, next(h.first_error for h in holders if h.errors)]))
            per_conn = (rss - result.base_kib) / opened if opened else None
            result.points.append(IdlePoint(wanted, opened, rss, per_conn, seconds, errors, note))
            common.progress(f"  memory: {opened} idle connections in {seconds:.1f} s, server RSS {rss / 1024:.1f} MiB"
                            f" ({common.fmt(per_conn, 1)} KiB/connection)")
        for h in holders:
            h.stop()
        holders.clear()
        gevent.sleep(2 * SETTLE)
        result.after_close_kib = server.rss_kib()
    finally:
        for h in holders:
            h.stop()
        server.stop()
    return result


@dataclass
class GrowthResult:
    """Server RSS (KiB) after warm-up and at each checkpoint of a long run of calls."""

    calls: int
    samples: list[tuple[int, int]] = field(default_factory=list)  # (calls done, RSS KiB)
    seconds: float = 0.0  # timed, without the warm-up
    errors: int = 0
    note: str = ""

    @property
    def rate(self) -> float | None:
        return self.calls / self.seconds if self.seconds else None

    @property
    def growth_kib(self) -> int | None:
        """RSS change from the first checkpoint (20%) to the end."""
        return self.samples[-1][1] - self.samples[1][1] if len(self.samples) > 2 else None


#: Calls over which the server's RSS must not grow (issue 3).
GROWTH_CALLS = 1_000_000


def calls_growth(calls: int, checkpoints: int = 5, conc: int = 16) -> GrowthResult:
    """``calls`` square calls on one connection, RSS read after warm-up and at every checkpoint."""
    result = GrowthResult(calls)
    server = common.python_server("kite")
    try:
        url = f"http://{common.HOST}:{int(server.ready)}/kite"
        with common.kite_clients(url, "sockjs-websocket", 1) as clients:
            common.run_load(clients, bench_square.square, conc, WARMUP_CALLS)
            result.samples.append((0, server.rss_kib()))
            step = math.ceil(calls / checkpoints)
            done = 0
            while done < calls:
                n = min(step, calls - done)
                stats = common.run_load(clients, bench_square.square, conc, n)
                done += n
                result.seconds += stats.seconds
                result.errors += stats.errors
                result.note = result.note or stats.note
                result.samples.append((done, server.rss_kib()))
                common.progress(f"  memory: {done:,} calls, server RSS {result.samples[-1][1] / 1024:.1f} MiB")
    finally:
        server.stop()
    return result


# --------------------------------------------------------------------------- report


def mib(kib: float) -> str:
    return f"{kib / 1024:,.1f} MiB"


def describe_growth(g: GrowthResult) -> str:
    """``RSS 40.1 → 40.2 → ... MiB (+0.1 MiB from 20% to 100%)``."""
    trail = " → ".join(f"{rss / 1024:.1f}" for _, rss in g.samples)
    growth = g.growth_kib
    tail = f" ({'+' if growth >= 0 else '-'}{mib(abs(growth))} from 20% to 100%)" if growth is not None else ""
    return f"RSS {trail} MiB after warm-up and each 20%{tail}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--conns", default=None, help="comma-separated totals of idle connections (default 1000,10000;"
                                                   " 1000 with --quick)")
    ap.add_argument("--calls", type=int, default=None, help="calls for the RSS-over-calls part (default 1000000;"
                                                            " 20000 with --quick)")
    ap.add_argument("--quick", action="store_true", help="a smoke run")
    ap.add_argument("--pin", choices=common.PIN_MODES, default="same", help="CPU pinning (default: same)")
    ap.add_argument("--hold", metavar="URL", help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.hold:
        hold(opts.hold)
        return 0
    common.install_cleanup()
    pinning = common.pin_cpus(opts.pin)
    totals = [int(x) for x in (opts.conns or ("1000" if opts.quick else "1000,10000")).split(",")]
    calls = opts.calls or (20_000 if opts.quick else GROWTH_CALLS)
    idle = idle_connections(totals)
    growth = calls_growth(calls)
    table = common.Table(["measurement", "RSS", "per connection", "note"], right=["RSS", "per connection"])
    table.add("baseline (after warm-up)", mib(idle.base_kib), "", "")
    for p in idle.points:
        table.add(f"{p.opened:,} idle connections", mib(p.rss_kib), f"{common.fmt(p.per_conn_kib, 1)} KiB",
                  f"opened in {p.seconds:.1f} s {p.note}".strip())
    if idle.after_close_kib is not None:
        table.add("after closing them", mib(idle.after_close_kib), "", "")
    table.add(f"{calls:,} calls, 16 in flight", mib(growth.samples[-1][1]) if growth.samples else "-", "",
              f"{describe_growth(growth)}; {common.fmt(growth.rate)} calls/s")
    print(f"kite server memory\n{common.machine_info(None)}; {pinning}\n")
    print(table.render())
    errors = sum(p.errors for p in idle.points) + growth.errors
    if growth.errors:
        print(f"! calls: {growth.errors} errors; first: {growth.note}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
