"""Payload scaling: calls whose results are 100 B, 10 KB and 1 MB strings.

    .venv/bin/python bench/payload.py [--seconds S] [--rounds R] [--quick] [--pin MODE]

``python → python`` calls ``blob [size]`` on the bench kite (``bench/servers.py
kite``), one call in flight, over SockJS websocket and raw websocket. Next to each, in
alternating runs, its ceiling: a bare WebSocket on the same frame layer
(``servers.py echo``, ``/blob``) that answers the same ~330-byte call text with the
prebuilt kite response of that size (SockJS-framed for the sockjs rows). The
difference is what JSON encoding, SockJS framing and the kite runtime cost per byte.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import sys  # noqa: E402

import ceiling  # noqa: E402
import common  # noqa: E402
import servers as bench_servers  # noqa: E402

SIZES = {"100 B": 100, "10 KB": 10_000, "1 MB": 1_000_000}
TRANSPORTS = ("sockjs-websocket", "raw-websocket")


def probe_for(size: int) -> int:
    """Calls in the sizing run: fewer for big results."""
    return 300 if size <= 10_000 else 20


def kite_contender(servers: common.Servers, transport: str, label: str) -> common.Contender:
    """``blob`` calls returning ``SIZES[label]`` characters, Python client and server."""
    size = SIZES[label]
    kind = common.TRANSPORTS[transport][0]
    url = servers.url("python", kind)

    def measure(n: int, warmup: int) -> common.Stats:
        return common.run_kite_calls(url, transport, lambda c: c.tell("blob", size), 1, 1, n, warmup)

    return common.Contender("payload", "python → python", transport, f"{label} result", measure,
                            probe=probe_for(size), server_pid=servers.pid("python", kind))


def ceiling_contender(servers: common.Servers, transport: str, label: str) -> common.Contender:
    """The bare WebSocket answering with the prebuilt response of that size."""
    size = SIZES[label]
    framing = "sockjs" if transport == "sockjs-websocket" else "raw"
    url = f"{servers.url('echo', 'blob')}?size={size}&framing={framing}"
    reply_size = len(bench_servers.blob_reply(size, framing))
    text = ceiling.ECHO_TEXT[transport]

    def measure(n: int, warmup: int) -> common.Stats:
        return ceiling.bare_echo(url, text, 1, n, warmup, reply_size)

    return common.Contender("payload", "bare ws (ceiling)", transport, f"{label} result", measure,
                            probe=probe_for(size), server_pid=servers.pid("echo", "blob"))


def run_payload(servers: common.Servers, rounds: int, seconds: float) -> list[tuple[common.Contender,
                                                                                    common.Contender]]:
    """(kite, ceiling) pairs per size and transport, measured in alternating rounds; notes hold MB/s."""
    pairs = [(kite_contender(servers, t, label), ceiling_contender(servers, t, label))
             for label in SIZES for t in TRANSPORTS]
    common.alternate([c for pair in pairs for c in pair], rounds, seconds, "payload")
    for pair in pairs:
        for c in pair:
            rate = c.rate()[0]
            size = SIZES[c.scenario.removesuffix(" result")]
            c.note = f"{rate * size / 1e6:,.1f} MB/s of results" if rate else ""
    return pairs


def main() -> int:
    rounds, seconds, pinning = common.alternating_setup(__doc__, seconds=1.0, quick_seconds=0.2, rounds=3)
    servers = common.Servers()
    try:
        pairs = run_payload(servers, rounds, seconds)
    finally:
        servers.stop()
    ceiling_of = {id(kite_c): ceil_c for kite_c, ceil_c in pairs}
    rows = [c for pair in pairs for c in pair]

    def vs_ceiling(c: common.Contender) -> str:
        return common.fmt(common.ratio_runs(c, ceiling_of[id(c)])[0], 2) if id(c) in ceiling_of else ""

    print(common.alternating_header("payload scaling", rounds, seconds, None, pinning))
    print(common.contender_table(rows, extra={"vs ceiling": vs_ceiling}).render())
    return 1 if common.report_failures(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
