"""Instructions per round trip: a figure that does not move with the machine's mood.

    .venv/bin/python bench/instructions.py [--calls N] [--only TEXT]

Calls per second swing ±20 % between runs on a shared VM; the number of user-space
instructions a round trip costs does not (callgrind counts them: the same total
twice to within 0.2 %, whatever else the machine does). Each scenario runs client
and server in ONE process over a real loopback socket, under ``valgrind
--tool=callgrind``, twice: with ``WARMUP`` round trips and with ``WARMUP + N``; the
difference divided by ``N`` is the cost of one round trip -- both sides' Python,
gevent, greenlet and libc work, without start-up and imports. Kernel time (the
syscalls themselves) is not counted, so this is the figure to compare two versions
of the code with, not a substitute for ``make bench``.

Scenarios: ``echo`` (the stack ceiling: a bare WebSocket echo, client and server on
``kite.transport.websocket``), ``kite raw`` (``square`` over ``/kite/websocket``) and ``kite
sockjs`` (``square`` over SockJS-websocket). Needs valgrind (Debian package
``valgrind``); takes ~1 minute on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

SCENARIOS = ("echo", "kite raw", "kite sockjs")
WARMUP = 500
HERE = Path(__file__).resolve().parent


def child(scenario: str, calls: int) -> None:
    """Run ``calls`` round trips of ``scenario`` in this process (under valgrind)."""
    from gevent import monkey

    monkey.patch_all()
    import gevent

    sys.path.insert(0, str(HERE))
    sys.path.insert(0, str(HERE.parent))
    import ceiling

    if scenario == "echo":
        from kite.transport import websocket, wsclient
        from kite.transport.wsgi import make_server

        def app(environ, start_response):
            ws = websocket.WebSocket.from_environ(environ)
            while (text := ws.recv_text()) is not None:
                ws.send_text(text)
            ws.close()
            ws.wait_closed()
            return []

        server = make_server(app, "127.0.0.1", 0)
        server.start()
        ws = wsclient.connect(f"ws://127.0.0.1:{server.server_port}/ws", timeout=10)
        for _ in range(calls):
            ws.send_text(ceiling.CALL_TEXT)
            ws.recv_text()
        ws.close()
        server.stop(timeout=1)
        return

    from kite import Kite

    k = Kite("math", "1.0.0")
    k.config.ip, k.config.port = "127.0.0.1", 0
    k.config.disable_authentication = True
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    gevent.spawn(k.run)
    if not k.server_ready_notify().wait(10):
        sys.exit("the kite did not start")
    url = f"ws://127.0.0.1:{k.port}/kite/websocket" if scenario == "kite raw" else k.url
    client = Kite("bench", "1.0.0").new_client(url, transport="websocket")
    client.dial_timeout(10)
    for _ in range(calls):
        client.tell("square", 3)
    client.close()
    k.close()


def collected(scenario: str, calls: int) -> int:
    """Instructions callgrind counted for a whole child run of ``calls`` round trips."""
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
           sys.executable, __file__, "--child", scenario, str(calls)]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=HERE.parent)
    found = re.search(r"Collected : (\d+)", run.stderr)
    if run.returncode != 0 or found is None:
        raise RuntimeError(f"{scenario} ({calls} calls) failed:\n{run.stderr[-2000:]}")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=2000, help="measured round trips (default 2000)")
    ap.add_argument("--only", default="", help="run only scenarios containing this")
    ap.add_argument("--child", nargs=2, metavar=("SCENARIO", "CALLS"), help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.child:
        child(opts.child[0], int(opts.child[1]))
        return 0
    if subprocess.run(["valgrind", "--version"], capture_output=True).returncode != 0:
        print("valgrind not found (apt-get install valgrind)", file=sys.stderr)
        return 2
    scenarios = [s for s in SCENARIOS if opts.only in s]
    jobs = [(s, n) for s in scenarios for n in (WARMUP, WARMUP + opts.calls)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
        counts = dict(zip(jobs, pool.map(lambda job: collected(*job), jobs), strict=True))
    per_trip = {s: (counts[s, WARMUP + opts.calls] - counts[s, WARMUP]) / opts.calls for s in scenarios}
    print(f"user-space instructions per round trip (callgrind; {opts.calls} round trips after {WARMUP}; "
          f"client and server in one process)\n")
    for s in scenarios:
        note = f"  {per_trip[s] / per_trip['echo']:.2f}x the echo" if "echo" in per_trip and s != "echo" else ""
        print(f"{s:12s} {per_trip[s]:>10,.0f}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
