"""A backend kite behind a proxy, run as ``python -m tests.proxy.backend_kite``.

Its config is its ``$KITE_HOME/kite.key`` and the ``KITE_*`` variables (the tests set
``KITE_ENVIRONMENT``, ``KITE_IP``, ``KITE_PORT=0``, and ``KITE_PROXY_URL`` when a test
wants it). It serves :func:`tests.proxy.conftest.add_methods`' methods, prints
``READY <kite id> <url>``, then runs ``register_to_proxy()`` (retrying every
``--retry`` seconds) and prints ``REGISTERED <url>`` after each registration with Kontrol.
With ``--tunnel`` it does not listen at all (``READY <kite id> -``) and runs
``register_to_tunnel()`` instead. SIGTERM stops it (exit 0).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402

import gevent  # noqa: E402

from kite import Kite  # noqa: E402
from tests.proxy.methods import add_methods  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--retry", type=float, default=0.2, help="kontrol.proxy_retry_interval, seconds")
    ap.add_argument("--name", default="math")
    ap.add_argument("--tunnel", action="store_true", help="no port of its own: register_to_tunnel()")
    args = ap.parse_args()
    k = add_methods(Kite(args.name, "1.0.0"))
    k.kontrol.proxy_retry_interval = args.retry
    k.kontrol.retry_interval = args.retry
    k.on_register(lambda result: print(f"REGISTERED {result.url}", flush=True))
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, k.close)
    if args.tunnel:
        print(f"READY {k.id} -", flush=True)
        k.register_to_tunnel()  # returns when the kite closes
        return 0
    runner = gevent.spawn(k.run)
    if not k.server_ready_notify().wait(10):
        print("the backend kite did not start", file=sys.stderr)
        return 1
    print(f"READY {k.id} {k.url}", flush=True)
    registrar = gevent.spawn(k.register_to_proxy)
    runner.join()
    registrar.join(5)
    return 0


if __name__ == "__main__":
    sys.exit(main())
