"""What metrics cost: python → python ``square`` with the server's metrics off and on, side by side.

    .venv/bin/python bench/metrics_cost.py [--rounds R] [--seconds S] [--pin MODE]

Two bench kites (``bench/servers.py kite``), one started with ``KITE_METRICS=1``; SockJS websocket,
1 and 16 calls in flight on one connection, in ``--rounds`` alternating rounds (default 7) of
~``--seconds`` each. Prints calls/s and server CPU µs per call (medians) and the on/off ratios.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import bench_square  # noqa: E402
import common  # noqa: E402

TRANSPORT = "sockjs-websocket"
SCENARIOS = ("1 in flight", "16 in flight")


def server(metrics: bool) -> common.Server:
    env = {**os.environ, "KITE_METRICS": "1" if metrics else "0"}
    return common.Server([sys.executable, str(common.SERVERS_SCRIPT), "kite"], common.ROOT,
                         f"python kite server (metrics {'on' if metrics else 'off'})", env=env)


def contender(srv: common.Server, scenario: str, label: str) -> common.Contender:
    conns, conc = bench_square.SCENARIOS[scenario]
    url = f"http://{common.HOST}:{int(srv.ready)}/kite"

    def measure(n: int, warmup: int) -> common.Stats:
        return common.run_kite_calls(url, TRANSPORT, bench_square.square, conns, conc, n, warmup)

    c = common.Contender("metrics", label, TRANSPORT, scenario, measure, probe=500, server_pid=srv.pid)
    return c


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7, help="alternating rounds (default 7)")
    ap.add_argument("--seconds", type=float, default=1.5, help="seconds per run (default 1.5)")
    ap.add_argument("--pin", choices=common.PIN_MODES, default="same", help="CPU pinning (default: same)")
    opts = ap.parse_args()
    common.install_cleanup()
    pinning = common.pin_cpus(opts.pin)
    off, on = server(False), server(True)
    try:
        table = common.Table(["in flight", "metrics off calls/s", "metrics on calls/s", "on/off (min–max)",
                              "srv µs/call off", "srv µs/call on"], right=["on/off (min–max)"])
        for scenario in SCENARIOS:
            pair = [contender(off, scenario, "metrics off"), contender(on, scenario, "metrics on")]
            common.alternate(pair, opts.rounds, opts.seconds, scenario)
            med, lo, hi = common.ratio_runs(pair[1], pair[0])
            table.add(scenario, common.fmt(pair[0].rate()[0]), common.fmt(pair[1].rate()[0]),
                      f"{common.fmt(med, 3)} ({common.fmt_spread(lo, hi, 3)})",
                      common.fmt(pair[0].server_cpu(), 1), common.fmt(pair[1].server_cpu(), 1))
    finally:
        off.stop()
        on.stop()
    print(f"metrics cost, python → python {TRANSPORT}, {opts.rounds} alternating rounds of ~{opts.seconds:g} s; "
          f"{pinning}\n")
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
