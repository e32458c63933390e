"""The kite the drain tests SIGTERM, run as ``python -m tests.drain_kite``, and its gunicorn app.

As a process it listens on 127.0.0.1 (``--port``, 0: any), registers with Kontrol over a
websocket (its kite.key comes from ``$KITE_HOME``), prints ``READY <kite id> <url>`` once it
serves and ``REGISTERED <url>`` once Kontrol has it, and serves from the main greenlet with
:meth:`kite.Kite.run`: SIGTERM/SIGINT drain it (``--drain-timeout``), a second one stops it.

As a gunicorn app (``tests.drain_kite:app``; each worker imports it and so has a kite of its
own) it registers ``$DRAIN_KITE_URL`` the same way once the worker runs.

Methods: ``nap(seconds)`` answers ``seconds`` after sleeping them (a call in flight), ``whoami()``
this kite's id (which worker a connection reached).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from kite import Kite  # noqa: E402
from kite.request import Request  # noqa: E402

#: Seconds the kite waits before retrying a failed registration (a test Kontrol answers at once).
RETRY_INTERVAL = 0.2


def _nap(r: Request) -> float:
    seconds = r.args.one().must_float64()
    gevent.sleep(seconds)
    return seconds


def make_drain_kite(port: int = 0) -> Kite:
    """The kite: authentication on (its callers hold kite keys from the test's Kontrol)."""
    k = Kite("drained", "1.0.0")
    c = k.config
    c.ip, c.port = "127.0.0.1", port
    c.environment, c.region = "drain", "loopback"
    c.kite_key_any_user = True
    k.kontrol.retry_interval = RETRY_INTERVAL
    k.handle_func("nap", _nap)
    k.handle_func("whoami", lambda r: k.id)
    return k


def _announce(k: Kite) -> None:
    if not k.server_ready_notify().wait(10):
        print("the drain kite did not start", file=sys.stderr, flush=True)
        return
    print(f"READY {k.id} {k.url}", flush=True)
    k.on_register(lambda result: print(f"REGISTERED {k.id} {result.url}", flush=True))
    k.register_forever(k.url)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--drain-timeout", type=float, default=5.0)
    args = ap.parse_args()
    k = make_drain_kite(args.port)
    k.config.drain_timeout = args.drain_timeout
    gevent.spawn(_announce, k)
    k.run()  # the main greenlet: SIGTERM drains
    print(f"EXITED drained={k.drain.drained} refused={k.drain.refused} "
          f"in_flight={k.drain.in_flight_at_start} seconds={k.drain.seconds}", flush=True)
    return 0


def _gunicorn_app() -> Kite:
    """Each gunicorn worker's kite, registering ``$DRAIN_KITE_URL`` (the shared port) with Kontrol."""
    k = make_drain_kite()
    url = os.environ.get("DRAIN_KITE_URL", "")
    if url:
        k.on_register(lambda result: print(f"REGISTERED {k.id} {result.url}", flush=True))
        k.register_forever(url)
    return k


if __name__ == "__main__":
    sys.exit(main())
elif os.environ.get("DRAIN_KITE_URL"):
    #: The WSGI application gunicorn loads (``tests.drain_kite:app``).
    app = _gunicorn_app()
