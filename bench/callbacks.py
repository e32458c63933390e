"""Callbacks: a method that calls a function passed by the caller once per call, then returns.

    .venv/bin/python bench/callbacks.py [--seconds S] [--rounds R] [--quick] [--pin MODE]

``callback [fn]`` calls ``fn("hello")`` and returns ``"done"``, on the Python bench
kite (``bench/servers.py kite``) and on kite.js' ``server.js`` alike. Each call is two
messages from the server (the callback invocation and the response); a Python client
call counts when its response arrives, and at the end of a run every callback must
have arrived too. kite.js clients are ``client.js`` with the ``__fn__`` marker (it
logs each invocation to stderr, part of its cost). All four pairs run in alternating
rounds, with ``square`` on python → python as the plain-call reference.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import bench_square  # noqa: E402
import common  # noqa: E402
import gevent  # noqa: E402

PAIRS = ("python → python", "kite.js → python", "python → kite.js", "kite.js → kite.js")


def python_callback_calls(url: str, transport: str, n: int, warmup: int) -> common.Stats:
    """``n`` ``callback`` calls from a Python kite client; checks every callback arrived."""
    received = [0]

    def on_callback(*_args) -> None:
        received[0] += 1

    stats = common.run_kite_calls(url, transport, lambda c: c.tell("callback", on_callback), 1, 1, n, warmup)
    with gevent.Timeout(5, False):
        while received[0] < n + warmup and not stats.errors:
            gevent.sleep(0.01)
    if not stats.errors and received[0] != n + warmup:
        stats.errors, stats.note = 1, f"{received[0]} callbacks for {n + warmup} calls"
    return stats


def callback_contender(servers: common.Servers, pair: str, transport: str) -> common.Contender:
    """``callback`` calls, one in flight, for ``pair`` (``"CLIENT → SERVER"``)."""
    client_side, server_side = (x.strip() for x in pair.split("→"))
    kind = common.TRANSPORTS[transport][0]
    url = servers.url(server_side, kind)
    if client_side == "python":
        def measure(n: int, warmup: int) -> common.Stats:
            return python_callback_calls(url, transport, n, warmup)
    else:
        def measure(n: int, warmup: int) -> common.Stats:
            return common.run_node_client(servers.node_path(), url, transport, "callback", '["__fn__"]', 1, 1, n,
                                          warmup)
    return common.Contender("callbacks", pair, transport, "1 in flight", measure, probe=300,
                            server_pid=servers.pid(server_side, kind))


def callback_contenders(servers: common.Servers) -> list[common.Contender]:
    """The callback rows plus the python → python ``square`` reference (the last one)."""
    rows = [callback_contender(servers, pair, "sockjs-websocket") for pair in PAIRS]
    rows.append(callback_contender(servers, "python → python", "raw-websocket"))
    reference = bench_square.square_contender(servers, "python → python", "sockjs-websocket", "1 in flight",
                                              group="callbacks")
    reference.scenario, reference.probe = "square, no callback", 300
    return [*rows, reference]


def main() -> int:
    rounds, seconds, pinning = common.alternating_setup(__doc__, seconds=1.0, quick_seconds=0.2, rounds=3)
    servers = common.Servers()
    try:
        rows = callback_contenders(servers)
        common.alternate(rows, rounds, seconds, "callbacks")
    finally:
        servers.stop()
    print(common.alternating_header("callbacks", rounds, seconds, servers.node, pinning))
    print(common.contender_table(rows).render())
    return 1 if common.report_failures(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
