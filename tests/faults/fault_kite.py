"""The kite the fault tests kill, stop and restart, run as ``python -m tests.faults.fault_kite``.

It listens on 127.0.0.1 (``--port``, 0: any), with short heartbeats so that dead peers are seen
fast, prints ``READY <kite id> <url>`` once it serves and, with ``--register websocket|http``,
``REGISTERED <url>`` once Kontrol has it (its kite.key comes from ``$KITE_HOME``; without
``--register`` it needs no credentials). SIGTERM stops it (exit 0).

Methods:

* ``echo(x)`` → ``x``; ``hang()`` never answers (a call left pending);
* ``push(size, interval, callback)``: calls ``callback`` with ``size`` characters every
  ``interval`` seconds until the session to the caller is gone, and answers how many went
  (the writer a stopped peer never reads);
* ``nap(seconds)`` answers after a sleep (calls that hold their worker slot); ``blob(size)``
  answers ``size`` characters;
* ``stats()``: this process's figures (:func:`server_stats`), for the test's own probe client.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402

import gevent  # noqa: E402

from kite import Client, Kite, SendError  # noqa: E402
from kite.request import Request  # noqa: E402
from tests.faults.loadgen import live_greenlets, rss_kib  # noqa: E402

#: Seconds a ``hang`` call sleeps: far beyond any test.
HANG_SECONDS = 3600.0


class Figures:
    """What the test asks ``stats`` for: pushes, and how each ended."""

    def __init__(self) -> None:
        self.pushed_chars = 0
        self.pushes_running = 0
        #: ``[seconds the push ran, characters it sent, why it stopped]`` per finished push.
        self.pushes_ended: list[list[object]] = []
        self.max_backlog = 0
        #: Most calls one served connection ran at once, and held queued, as the sampler saw.
        self.max_running_calls = 0
        self.max_queued_calls = 0
        #: ``"<code> <reason>"`` of every served session that ended -> how many.
        self.session_ends: Counter[str] = Counter()


#: Seconds between the samples of every served connection's call counts.
SAMPLE_INTERVAL = 0.01


def sample_calls(k: Kite, figures: Figures) -> None:
    """Record the most calls any served connection runs and queues (the concurrency limit's proof)."""
    while True:
        for client in list(k._clients):
            counts = client.stats()
            figures.max_running_calls = max(figures.max_running_calls, counts["running_calls"])
            figures.max_queued_calls = max(figures.max_queued_calls, counts["queued_calls"])
        gevent.sleep(SAMPLE_INTERVAL)


def add_methods(k: Kite, figures: Figures) -> Kite:
    k.handle_func("echo", lambda r: r.args[0] if len(r.args) else None)
    k.handle_func("hang", lambda r: gevent.sleep(HANG_SECONDS))
    k.handle_func("nap", lambda r: gevent.sleep(r.args.one().must_float64()))
    k.handle_func("blob", lambda r: "x" * r.args.one().must_int())

    def push(r: Request) -> int:
        size_arg, interval_arg, callback_arg = r.args.slice_of_length(3)
        size, interval, callback = size_arg.must_int(), interval_arg.must_float64(), callback_arg.must_function()
        payload = "x" * size
        started, sent, reason = time.monotonic(), 0, "?"
        figures.pushes_running += 1
        try:
            while True:
                callback(payload)
                sent += size
                figures.pushed_chars += size
                conn = r.client._conn
                if conn is not None:
                    figures.max_backlog = max(figures.max_backlog, conn.session.backlog())
                gevent.sleep(interval)
        except SendError as exc:
            reason = str(exc)
        finally:
            figures.pushes_running -= 1
            figures.pushes_ended.append([round(time.monotonic() - started, 3), sent, reason])
        return sent

    k.handle_func("push", push)
    k.handle_func("stats", lambda r: server_stats(k, figures))

    @k.on_disconnect
    def ended(client: Client) -> None:
        session = client._conn.session if client._conn is not None else None
        code, reason = getattr(session, "close_code", None), getattr(session, "close_reason", "")
        figures.session_ends[f"{code} {reason}"] += 1

    return k


def server_stats(k: Kite, figures: Figures) -> dict:
    """RSS, live greenlets, sessions served, and the push figures."""
    return {
        "rss_kib": rss_kib(),
        "greenlets": live_greenlets(),
        "clients": len(k._clients),
        "pushed_chars": figures.pushed_chars,
        "pushes_running": figures.pushes_running,
        "pushes_ended": figures.pushes_ended,
        "max_backlog": figures.max_backlog,
        "max_running_calls": figures.max_running_calls,
        "max_queued_calls": figures.max_queued_calls,
        "session_ends": dict(figures.session_ends),
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--heartbeat", type=float, default=0.5, help="SockJS heartbeat interval, seconds")
    ap.add_argument("--dead-peer", type=float, default=None,
                    help="seconds a silent WebSocket peer lives (default: 3 heartbeats)")
    ap.add_argument("--disconnect-delay", type=float, default=1.0, help="seconds an unpolled XHR session lives")
    ap.add_argument("--max-backlog", type=int, default=None, help="characters queued per session before it closes")
    ap.add_argument("--register", choices=("websocket", "http"), default=None)
    args = ap.parse_args()
    # Warnings, and the connections the dead-peer watchdog drops (for a test's failure report).
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("kite.transport.websocket").setLevel(logging.INFO)
    k = Kite("faults", "1.0.0")
    c = k.config
    c.ip, c.port = "127.0.0.1", args.port
    c.heartbeat_interval, c.disconnect_delay = args.heartbeat, args.disconnect_delay
    c.dead_peer_timeout = args.dead_peer
    if args.max_backlog is not None:
        c.max_send_backlog = args.max_backlog
    if args.register is None:
        c.disable_authentication = True
    else:
        c.environment, c.region = "faults", "loopback"
        k.kontrol.retry_interval = 0.2
    figures = Figures()
    add_methods(k, figures)
    gevent.spawn(sample_calls, k, figures)
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, k.close)
    runner = gevent.spawn(k.run)
    if not k.server_ready_notify().wait(10):
        print("the fault kite did not start", file=sys.stderr)
        return 1
    print(f"READY {k.id} {k.url}", flush=True)
    if args.register == "websocket":
        k.on_register(lambda result: print(f"REGISTERED {result.url}", flush=True))
        k.register_forever(k.url)
    elif args.register == "http":
        result = k.register_http_forever(k.url)
        print(f"REGISTERED {result.url}", flush=True)
    runner.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
