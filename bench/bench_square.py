"""Benchmark: ``square`` calls per second and latency, kite for Python next to kite.js.

    .venv/bin/python bench/bench_square.py [--calls N] [--quick] [--only TEXT] [--pin MODE]

Starts every server itself (all on 127.0.0.1, free ports) and prints ONE table:

* pairs: python -> python, kite.js -> python, python -> kite.js, kite.js -> kite.js
  (kite.js = npm kite.js@1.0.13 via tests/interop/kitejs/{client,server}.js; run
  ``make deps`` or ``npm ci`` there first);
* transports: SockJS websocket, raw websocket (Python: ``/kite/websocket``; kite.js: its
  plain ``ws`` server), SockJS XHR polling;
* scenarios: 1 call in flight on one connection, 16 in flight on one connection, 16
  connections with 1 in flight each.

The Python server runs in its own process (``bench/servers.py kite``), so client and
server never share one interpreter. Latency is measured per call with
``time.perf_counter`` (Python) / ``process.hrtime`` (node); p50/p99 are nearest-rank
percentiles. XHR polling rows use a twentieth of the calls (each call is an HTTP round
trip, and kite.js' node client needs ~26 ms per polling call whatever the server).
Each row runs once; ``bench/run.py`` (``make bench``) adds alternating repeats.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import common  # noqa: E402

SCENARIOS = {  # name -> (connections, calls in flight per connection)
    "1 in flight": (1, 1),
    "16 in flight": (1, 16),
    "16 conns": (16, 1),
}
TRANSPORTS = ("sockjs-websocket", "raw-websocket", "xhr-polling")
PAIRS = ("python → python", "kite.js → python", "python → kite.js", "kite.js → kite.js")


def square(client) -> None:
    """One ``square(3)`` call on a Python kite client."""
    client.tell("square", 3)


def square_contender(servers: common.Servers, pair: str, transport: str, scenario: str,
                     group: str = "square") -> common.Contender:
    """A ``square`` row: ``pair`` is ``"CLIENT → SERVER"`` with sides ``python`` / ``kite.js``."""
    client_side, server_side = (x.strip() for x in pair.split("→"))
    conns, conc = SCENARIOS[scenario]
    kind = common.TRANSPORTS[transport][0]
    url = servers.url(server_side, kind)

    if client_side == "python":
        def measure(n: int, warmup: int) -> common.Stats:
            return common.run_kite_calls(url, transport, square, conns, conc, n, warmup)
    else:
        def measure(n: int, warmup: int) -> common.Stats:
            return common.run_node_client(servers.node_path(), url, transport, "square", "[3]", conns, conc, n, warmup)

    return common.Contender(group, pair, transport, scenario, measure, server_pid=servers.pid(server_side, kind))


def run_matrix(servers: common.Servers, n_ws: int, n_xhr: int, only: str = "") -> list[common.Contender]:
    """Run every row of the matrix once (those whose ``pair transport scenario`` contain ``only``)."""
    rows = []
    for pair in PAIRS:
        for transport in TRANSPORTS:
            for scenario, (conns, conc) in SCENARIOS.items():
                if only not in f"{pair} {transport} {scenario}":
                    continue
                n = n_xhr if transport == "xhr-polling" else n_ws
                try:
                    c = square_contender(servers, pair, transport, scenario)
                    c.runs.append(c.run(n, max(conns * conc, n // 10)))
                except Exception as e:  # e.g. a server that did not start
                    c = common.Contender("square", pair, transport, scenario, runs=[common.Stats.failed(n, repr(e))])
                rows.append(c)
                s = c.runs[0]
                common.progress(f"  {pair:18} {transport:17} {scenario:13} {common.fmt(s.rate):>8} calls/s"
                                f"{'  (' + str(s.errors) + ' errors)' if s.errors else ''}")
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=None, help="calls per row (default 4000; 300 with --quick)")
    ap.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    ap.add_argument("--only", default="", help="run only rows whose 'pair transport scenario' contains this")
    ap.add_argument("--pin", choices=common.PIN_MODES, default="same", help="CPU pinning (default: same)")
    opts = ap.parse_args()
    common.install_cleanup()
    pinning = common.pin_cpus(opts.pin)
    node = common.node_binary()
    n_ws = opts.calls or (300 if opts.quick else 4000)
    n_xhr = max(32, n_ws // 20)
    started = time.perf_counter()
    servers = common.Servers(node)
    try:
        rows = run_matrix(servers, n_ws, n_xhr, opts.only)
    finally:
        servers.stop()

    print(f"kite square benchmark: {n_ws} calls per row ({n_xhr} for xhr-polling), "
          f"127.0.0.1, {time.perf_counter() - started:.0f} s total\n{common.machine_info(node)}; {pinning}\n")
    print(common.contender_table(rows, spread=False).render())
    return 1 if common.report_failures(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
