"""A call through each proxy next to the same call made directly.

    .venv/bin/python bench/proxied.py [--seconds S] [--rounds R] [--quick] [--pin MODE]

The bench kite (``bench/servers.py kite``) and the reverse proxy (``bench/servers.py
proxy``, :mod:`kite.proxy.reverse`) run in processes of their own; this process
registers the kite with the proxy (``register`` with the kite key the proxy printed,
holding that connection open, as ``register_to_proxy`` would) and calls ``square`` on
``http://<proxy>/proxy/<id>`` and on the kite's own URL. The tunnel proxy
(``bench/servers.py tunnelproxy``, :mod:`kite.proxy.tunnel`) runs too, with a second bench
kite that does not listen (``bench/servers.py tunnelled``) registered through it, called on
``http://<tunnel proxy>/proxy?kiteID=<id>``. Every row: SockJS websocket and raw
websocket, 1 and 16 calls in flight on one connection, in alternating rounds. The
``proxy µs/call`` column is the proxy process's CPU time per call (``srv µs/call`` stays
the kite's). With ``--pin same``
(the default) every process shares one CPU, so the proxy's work comes straight out of the
calls/s: the ratio is what the extra hop costs, not a measure of spare cores.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from typing import Any  # noqa: E402

import bench_square  # noqa: E402
import common  # noqa: E402

#: ``proxied / direct`` calls/s a proxy should keep at 16 calls in flight (issue 11).
PROXY_TARGET = 0.8
TRANSPORTS = ("sockjs-websocket", "raw-websocket")
WINDOWS = (1, 16)
DIRECT = "python → python"
#: The proxy's CPU per call of each run, by proxied contender (``id()``).
_proxy_cpu: dict[int, list[float]] = {}
PROXIED = "python → proxy → python"
TUNNELLED = "python → tunnel → python"


@contextmanager
def proxied_kite(servers: common.Servers) -> Iterator[tuple[common.Server, int, str]]:
    """The reverse proxy process, the kite's server pid and the public SockJS URL of the bench
    kite behind it (registered until exit)."""
    from kite import Auth, Kite

    proxy = common.python_server("proxy")
    registrar = Kite("bench-registrar", "1.0.0")
    try:
        port, kite_key = proxy.ready.split()
        control = registrar.new_client(f"http://{common.HOST}:{port}/kite")
        control.auth = Auth("kiteKey", kite_key)
        control.dial_timeout(10)
        public = control.tell_with_timeout("register", 10, servers.url("python", "sockjs"))
        yield proxy, servers.pid("python", "sockjs"), public
    finally:
        registrar.close()
        proxy.stop()


@contextmanager
def tunnelled_kite() -> Iterator[tuple[common.Server, int, str]]:
    """The tunnel proxy process, the pid of the bench kite behind it and its public URL."""
    proxy = common.python_server("tunnelproxy")
    try:
        port, kite_key = proxy.ready.split()
        kite = common.Server([sys.executable, str(common.SERVERS_SCRIPT), "tunnelled", port, kite_key], common.ROOT,
                             "python tunnelled kite")
        try:
            yield proxy, kite.pid, kite.ready
        finally:
            kite.stop()
    finally:
        proxy.stop()


def raw_url(public: str) -> str:
    """The raw WebSocket URL of a proxied SockJS URL (``/websocket`` before any query string)."""
    base, _, query = public.partition("?")
    return base.replace("http://", "ws://", 1) + "/websocket" + (f"?{query}" if query else "")


def direct_rows(servers: common.Servers) -> list[common.Contender]:
    """The direct ``square`` rows, per window and transport."""
    rows = []
    for window in WINDOWS:
        for transport in TRANSPORTS:
            c = bench_square.square_contender(servers, DIRECT, transport, f"{window} in flight", group="proxy")
            c.probe = 500
            rows.append(c)
    return rows


def proxied_rows(pair: str, proxy: common.Server, kite_pid: int, public: str) -> list[common.Contender]:
    """``square`` through a proxy at ``public``, per window and transport; each records the proxy's CPU."""
    rows = []
    for window in WINDOWS:
        for transport in TRANSPORTS:
            url = public if transport == "sockjs-websocket" else raw_url(public)
            cpu: list[float] = []

            def measure(n: int, warmup: int, url: str = url, transport: str = transport, window: int = window,
                        cpu: list[float] = cpu) -> common.Stats:
                before = common.cpu_seconds(proxy.pid)
                stats = common.run_kite_calls(url, transport, bench_square.square, 1, window, n, warmup)
                if not stats.errors:
                    cpu.append((common.cpu_seconds(proxy.pid) - before) / (n + warmup) * 1e6)
                return stats

            c = common.Contender("proxy", pair, transport, f"{window} in flight", measure, server_pid=kite_pid)
            _proxy_cpu[id(c)] = cpu
            c.probe = 500
            rows.append(c)
    return rows


def proxy_cpu(c: common.Contender) -> str:
    """The proxy process's median CPU microseconds per call, for proxied rows."""
    runs = _proxy_cpu.get(id(c), [])[1:]  # the first run is the probe
    return common.fmt(common.median_spread(runs)[0], 1) if runs else ""


def summary(rows: list[common.Contender]) -> common.Table:
    """``proxied / direct`` calls/s and p99, per proxy, transport and window, against the target."""
    by_key = {(c.pair, c.transport, c.scenario): c for c in rows}
    table = common.Table(["figure", "median", "min–max", "target", "verdict"], right=["median", "min–max"])
    for pair, name in ((PROXIED, "reverse proxy"), (TUNNELLED, "tunnel proxy")):
        for window in WINDOWS:
            for transport in TRANSPORTS:
                key = (transport, f"{window} in flight")
                proxied, direct = by_key.get((pair, *key)), by_key[(DIRECT, *key)]
                if proxied is None:
                    continue
                med, lo, hi = common.ratio_runs(proxied, direct)
                target = PROXY_TARGET if window == 16 else None
                verdict = "" if target is None or med is None else ("ok" if med >= target else "MISS")
                table.add(f"{name} / direct calls/s, {window} in flight, {transport}", common.fmt(med, 2),
                          common.fmt_spread(lo, hi, 2), f"≥ {target:g}" if target else "", verdict)
                p99 = common.ratio_runs(proxied, direct, "p99_ms")
                table.add(f"{name} / direct p99, {window} in flight, {transport}", common.fmt(p99[0], 2),
                          common.fmt_spread(p99[1], p99[2], 2), "", "")
    return table


def run_proxied(servers: common.Servers, rounds: int, seconds: float) -> list[common.Contender]:
    """Start both proxies, register a bench kite with each, run the rows in alternating rounds; the rows."""
    with proxied_kite(servers) as reverse, tunnelled_kite() as tunnel:
        rows = [*direct_rows(servers), *proxied_rows(PROXIED, *reverse), *proxied_rows(TUNNELLED, *tunnel)]
        common.alternate(rows, rounds, seconds, "proxy")
    return rows


def extra_columns() -> dict[str, Any]:
    return {"proxy µs/call": proxy_cpu}


def main() -> int:
    rounds, seconds, pinning = common.alternating_setup(__doc__, seconds=1.0, quick_seconds=0.25, rounds=5)
    servers = common.Servers()
    try:
        rows = run_proxied(servers, rounds, seconds)
    finally:
        servers.stop()
    print(common.alternating_header("reverse and tunnel proxy", rounds, seconds, None, pinning))
    print(common.contender_table(rows, extra=extra_columns()).render())
    print()
    print(summary(rows).render())
    return 1 if common.report_failures(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
