"""The whole benchmark suite (``make bench``): one table, then the figures against the targets.

    .venv/bin/python bench/run.py [--quick] [--rounds R] [--seconds S] [--growth-calls N] [--pin MODE]
                                  [--sections square,ratios,payload,callbacks,proxy,memory]

Sections (each also runs alone: ``bench/<module>.py``):

* ``square`` (bench_square.py): the square matrix -- python / kite.js clients and
  servers, SockJS websocket, raw websocket and XHR polling, 1 and 16 calls in flight on
  one connection and 16 connections; one run per row.
* ``ratios``: the figures the targets are ratios of, in ``--rounds`` alternating
  rounds (default 5) of ~``--seconds`` each: per transport the stack ceiling (bare
  WebSocket echo, ceiling.py), python ⇄ python and kite.js ⇄ kite.js with 1 call in
  flight; the SockJS session echo; python ⇄ python and session echo with 16 in flight.
* ``payload`` (payload.py): 100 B / 10 KB / 1 MB results next to their ceiling.
* ``callbacks`` (callbacks.py): a method calling a passed function once per call.
* ``proxy`` (proxied.py): ``square`` through the reverse and the tunnel proxy next to the direct call,
  1 and 16 in flight, in ``--rounds`` alternating rounds.
* ``memory`` (memory.py): server RSS per idle connection at 1k and 10k connections,
  and over 1M calls (``--growth-calls N`` for fewer).

Every server runs in its own process, on 127.0.0.1 and a free port; every process is
stopped at the end, on errors and on Ctrl-C. Ratios are taken round by round (the runs
of one round are seconds apart) and summarised as median and min–max. Progress goes to
stderr, the table and the summary to stdout. The default takes ~4 minutes on 2 cores,
``--quick`` under one.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import bench_square  # noqa: E402
import callbacks  # noqa: E402
import ceiling  # noqa: E402
import common  # noqa: E402
import memory  # noqa: E402
import payload  # noqa: E402
import proxied  # noqa: E402

SECTIONS = ("square", "ratios", "payload", "callbacks", "proxy", "memory")
#: Targets of issue 3.
CEILING_TARGET = 0.85
KITEJS_TARGET = 1.2
CONCURRENCY_TARGET = 2.0
P99_TARGET_MS = 5.0
RSS_10K_TARGET_KIB = 1024 * 1024
#: What counts as "no RSS growth" over the calls run.
GROWTH_TOLERANCE_KIB = 1024
RATIO_TRANSPORTS = ("raw-websocket", "sockjs-websocket")
QUICK_WARNING = ("\n--quick: runs too short to warm kite.js' JIT or to tame the noise -- a smoke test, "
                 "not figures to hold against the targets")
PY = "python → python"
JS = "kite.js → kite.js"


class Ratios:
    """The alternating set behind the ratio targets, addressable by ``(pair, transport, in flight)``."""

    def __init__(self, servers: common.Servers):
        self.by_key: dict[tuple[str, str, int], common.Contender] = {}
        for t in RATIO_TRANSPORTS:  # ceiling, python, kite.js, in turn, per transport
            self._add("ceiling", t, 1, ceiling.bare_contender(servers, t, 1))
            self._add(PY, t, 1, bench_square.square_contender(servers, PY, t, "1 in flight"))
            self._add(JS, t, 1, bench_square.square_contender(servers, JS, t, "1 in flight"))
        for window in (1, 16):
            for t in RATIO_TRANSPORTS:
                if window == 16:
                    c = bench_square.square_contender(servers, PY, t, "16 in flight")
                    self._add(PY, t, 16, c)
                self._add("session", t, window, ceiling.session_contender(servers, t, window))
        for key, c in self.by_key.items():
            c.group = "side by side"
            if key[0] == "ceiling":
                c.pair = "bare ws echo (ceiling)"
            elif key[0] == "session":
                c.pair = "session echo (no kite)"

    def _add(self, pair: str, transport: str, window: int, c: common.Contender) -> None:
        c.probe = 500
        self.by_key[pair, transport, window] = c

    def __getitem__(self, key: tuple[str, str, int]) -> common.Contender:
        return self.by_key[key]

    def contenders(self) -> list[common.Contender]:
        return list(self.by_key.values())


# --------------------------------------------------------------------------- report


def memory_rows(idle: memory.IdleResult | None, growth: memory.GrowthResult | None) -> list[common.Contender]:
    """The memory figures as table rows (their numbers in the note column)."""
    rows = []

    def add(scenario: str, note: str, runs: list[common.Stats] | None = None) -> None:
        rows.append(common.Contender("memory", "python server", "sockjs-websocket", scenario, runs=runs or [],
                                     note=note))

    if idle is not None:
        add("baseline after warm-up", f"RSS {memory.mib(idle.base_kib)}")
        for p in idle.points:
            add(f"{p.opened:,} idle connections",
                f"RSS {memory.mib(p.rss_kib)} = baseline + {common.fmt(p.per_conn_kib, 1)} KiB/connection"
                f" (opened in {p.seconds:.1f} s{'; ' + p.note if p.note else ''})")
        if idle.after_close_kib is not None:
            add("after closing them", f"RSS {memory.mib(idle.after_close_kib)}")
    if growth is not None:
        add(f"{growth.calls:,} calls, 16 in flight", memory.describe_growth(growth),
            [common.Stats(growth.calls, growth.seconds, errors=growth.errors, note=growth.note)])
    return rows


def verdict(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "MISS")


def summary(ratios: Ratios | None, payload_pairs: list | None, callback_rows: list | None,
            idle: memory.IdleResult | None, growth: memory.GrowthResult | None) -> common.Table:
    """The figures against the targets of issue 3, then informative ratios."""
    table = common.Table(["figure", "median", "min–max", "target", "verdict"], right=["median", "min–max"])

    def ratio_line(label: str, a: common.Contender, b: common.Contender, target: float | None,
                   attr: str = "rate") -> None:
        med, lo, hi = common.ratio_runs(a, b, attr)
        ok = None if target is None or med is None else med >= target
        table.add(label, common.fmt(med, 2), common.fmt_spread(lo, hi, 2),
                  f"≥ {target:g}" if target is not None else "", verdict(ok) if target is not None else "")

    if ratios is not None:
        for t in RATIO_TRANSPORTS:
            ratio_line(f"py ⇄ py / ceiling (bare ws echo), 1 in flight, {t}", ratios[PY, t, 1],
                       ratios["ceiling", t, 1], CEILING_TARGET)
        for t in RATIO_TRANSPORTS:
            ratio_line(f"py ⇄ py / kite.js ⇄ kite.js, 1 in flight, {t}", ratios[PY, t, 1], ratios[JS, t, 1],
                       KITEJS_TARGET)
        for t in RATIO_TRANSPORTS:
            ratio_line(f"py ⇄ py 16 in flight / 1 in flight, {t}", ratios[PY, t, 16], ratios[PY, t, 1],
                       CONCURRENCY_TARGET)
        for t in RATIO_TRANSPORTS:
            med, lo, hi = ratios[PY, t, 16].p99()
            table.add(f"p99 ms, py ⇄ py, 16 in flight, {t}", common.fmt(med, 3), common.fmt_spread(lo, hi, 3),
                      f"≤ {P99_TARGET_MS:g} ms", verdict(None if med is None else med <= P99_TARGET_MS))
    if idle is not None:
        for p in idle.points:
            table.add(f"RSS per idle connection at {p.opened:,}", f"{common.fmt(p.per_conn_kib, 1)} KiB", "", "", "")
        big = [p for p in idle.points if p.wanted >= 10_000]
        if big:
            p = big[-1]
            table.add(f"server RSS with {p.opened:,} idle connections", memory.mib(p.rss_kib), "", "< 1 GiB",
                      verdict(p.rss_kib < RSS_10K_TARGET_KIB and p.opened >= 10_000))
        else:
            table.add("server RSS with 10,000 idle connections", "not run", "", "< 1 GiB", "-")
    if growth is not None and growth.growth_kib is not None:
        g = growth.growth_kib
        table.add(f"RSS growth over {growth.calls:,} calls (20% → 100%)", f"{g / 1024:+.1f} MiB", "",
                  f"none (≤ {GROWTH_TOLERANCE_KIB // 1024} MiB)", verdict(g <= GROWTH_TOLERANCE_KIB))
    table.add("-- for information --", "", "", "", "")
    if ratios is not None:
        for t in RATIO_TRANSPORTS:
            ratio_line(f"py ⇄ py / session echo, 1 in flight, {t}", ratios[PY, t, 1], ratios["session", t, 1], None)
            ratio_line(f"session echo / ceiling, 1 in flight, {t}", ratios["session", t, 1],
                       ratios["ceiling", t, 1], None)
            ratio_line(f"py ⇄ py / session echo, 16 in flight, {t}", ratios[PY, t, 16], ratios["session", t, 16],
                       None)
        for t in RATIO_TRANSPORTS:
            ratio_line(f"server CPU per call, python kite / bare ws echo, 1 in flight, {t}", ratios[PY, t, 1],
                       ratios["ceiling", t, 1], None, "server_cpu_us")
            ratio_line(f"server CPU per call, kite.js / python kite, 1 in flight, {t}", ratios[JS, t, 1],
                       ratios[PY, t, 1], None, "server_cpu_us")
    for kite_c, ceil_c in payload_pairs or ():
        ratio_line(f"payload py ⇄ py / ceiling, {kite_c.scenario}, {kite_c.transport}", kite_c, ceil_c, None)
    if callback_rows:
        by_pair = {(c.pair, c.transport, c.scenario): c for c in callback_rows}
        py_cb = by_pair[PY, "sockjs-websocket", "1 in flight"]
        ratio_line("callbacks py ⇄ py / kite.js ⇄ kite.js, sockjs-websocket", py_cb,
                   by_pair[JS, "sockjs-websocket", "1 in flight"], None)
        ratio_line("callbacks py ⇄ py, callback call / square call, sockjs-websocket", py_cb,
                   by_pair[PY, "sockjs-websocket", "square, no callback"], None)
    return table


# --------------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="a smoke run under a minute")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds for the ratios (default 5)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="seconds per ratio run (default 1.5; 0.25 with --quick)")
    ap.add_argument("--growth-calls", type=int, default=None,
                    help=f"calls for the RSS-growth figure (default {memory.GROWTH_CALLS:,}; 20,000 with --quick)")
    ap.add_argument("--pin", choices=common.PIN_MODES, default="same",
                    help="CPU pinning: same (default; every process on one CPU), split, none")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated subset of " + ",".join(SECTIONS))
    opts = ap.parse_args()
    if opts.rounds < 1:
        ap.error("--rounds must be at least 1")
    sections = {s.strip() for s in opts.sections.split(",") if s.strip()}
    if not sections <= set(SECTIONS):
        ap.error(f"unknown sections: {', '.join(sorted(sections - set(SECTIONS)))}")
    quick = opts.quick
    seconds = opts.seconds or (0.25 if quick else 1.5)
    side_seconds = seconds * (0.6 if quick else 0.5)  # payload and callback runs
    side_rounds = 3
    n_ws = 300 if quick else 2000
    n_xhr = max(32, n_ws // 20)
    idle_totals = [1000] if quick else [1000, 10_000]
    growth_calls = opts.growth_calls or (20_000 if quick else memory.GROWTH_CALLS)

    common.install_cleanup()
    pinning = common.pin_cpus(opts.pin)
    node = common.node_binary()
    started = time.perf_counter()
    rows: list[common.Contender] = []
    ratios = payload_pairs = callback_rows = idle = growth = None
    proxy_rows: list[common.Contender] = []
    servers = common.Servers(node)
    try:
        if "square" in sections:
            common.progress("square matrix")
            rows += bench_square.run_matrix(servers, n_ws, n_xhr)
        if "ratios" in sections:
            common.progress(f"side by side: {opts.rounds} alternating rounds")
            ratios = Ratios(servers)
            common.alternate(ratios.contenders(), opts.rounds, seconds, "ratios")
            rows += ratios.contenders()
        if "payload" in sections:
            common.progress("payload")
            payload_pairs = payload.run_payload(servers, side_rounds, side_seconds)
            rows += [c for pair in payload_pairs for c in pair]
        if "callbacks" in sections:
            common.progress("callbacks")
            callback_rows = callbacks.callback_contenders(servers)
            common.alternate(callback_rows, side_rounds, side_seconds, "callbacks")
            rows += callback_rows
        if "proxy" in sections:
            common.progress(f"reverse and tunnel proxy: {opts.rounds} alternating rounds")
            proxy_rows = proxied.run_proxied(servers, opts.rounds, seconds)
            rows += proxy_rows
    finally:
        servers.stop()
    if "memory" in sections:
        common.progress("memory")
        idle = memory.idle_connections(idle_totals)
        growth = memory.calls_growth(growth_calls)

    rows += memory_rows(idle, growth)
    table = common.contender_table(rows, group=True, extra=proxied.extra_columns() if proxy_rows else None)
    print(f"kite for Python benchmark{' (--quick)' if quick else ''}: 127.0.0.1, "
          f"{time.perf_counter() - started:.0f} s total\n{common.machine_info(node)}; {pinning}\n"
          f"square: one run of {n_ws} calls per row ({n_xhr} for xhr-polling); side by side: medians of "
          f"{opts.rounds} alternating runs of ~{seconds:g} s (min–max = spread); payload, callbacks: "
          f"{side_rounds} alternating runs of ~{side_seconds:g} s; srv µs/call: the server process's CPU time "
          f"per call (connecting and warm-up included)"
          f"{QUICK_WARNING if quick else ''}\n")
    print(table.render())
    print("\ntargets (ratios are per round, then median and min–max over the rounds)\n")
    print(summary(ratios, payload_pairs, callback_rows, idle, growth).render())
    if proxy_rows:
        print(f"\nproxies (target: proxied ≥ {proxied.PROXY_TARGET:g}× direct calls/s at 16 in flight)\n")
        print(proxied.summary(proxy_rows).render())
    failed = common.report_failures(rows)
    for p in idle.points if idle else ():
        if p.errors:
            failed += 1
            print(f"! memory: {p.errors} of {p.wanted} connections failed: {p.note}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
