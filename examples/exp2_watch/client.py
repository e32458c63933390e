"""exp2-watch: print a line for every math kite that registers to or leaves Kontrol.

The Go example ``exp2-watch`` was never built: it called a ``WatchKites`` API that does
not exist (PROTOCOL.md §7.9, §11). Here it works: ``watch_kites`` sends ``getKites`` with a
``watchCallback`` and Kontrol streams REGISTER/DEREGISTER events for the query. The math
kites already registered arrive first, as REGISTER events (and again after a Kontrol
reconnect). Run it, then start and stop a math kite::

    python -m examples.exp2_watch.client &
    python -m examples.math_register.server --ip 127.0.0.1 --port 6667
    # REGISTER /alice/unknown/math/1.0.0/unknown/host/<id> http://127.0.0.1:6667/kite
    # (Ctrl-C the math kite)
    # DEREGISTER /alice/unknown/math/1.0.0/unknown/host/<id>

kite.key (``$KITE_HOME/kite.key`` or ``~/.kite/kite.key``) names the user and the
Kontrol; ``--username``/``--environment`` default to the kite's config (kite.key's
``sub``, ``KITE_USERNAME``, ``KITE_ENVIRONMENT``), ``--kontrol-url`` to kite.key's
``kontrolURL`` (or ``KITE_KONTROL_URL``). ``--count N`` exits after N events; otherwise
it runs until SIGTERM or Ctrl-C.
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402

from kite import Kite, KiteError  # noqa: E402
from kite.wire.protocol import KiteIdentity  # noqa: E402

log = logging.getLogger("examples.exp2_watch")


def format_event(event: dict[str, Any]) -> str:
    """``ACTION /user/env/name/version/region/hostname/id [url]``: one line per event."""
    line = f"{event['action']} {KiteIdentity.from_wire(event.get('kite'))}"
    return f"{line} {event['url']}" if event.get("url") else line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="math", help="kite name to watch")
    parser.add_argument("--username", default=None, help="default: the kite.key's user")
    parser.add_argument("--environment", default=None, help="default: KITE_ENVIRONMENT (else 'unknown')")
    parser.add_argument("--kontrol-url", default=None, help="default: the kite.key's kontrolURL")
    parser.add_argument("--count", type=int, default=0, help="exit after this many events (0: run until stopped)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    k = Kite("exp2-watch", "1.0.0")  # reads kite.key: our user, Kontrol's URL and key
    if args.kontrol_url:
        k.config.kontrol_url = args.kontrol_url
    query = {
        "username": args.username or k.config.username,
        "environment": args.environment or k.config.environment,
        "name": args.name,
    }
    done = Event()
    seen = 0

    def on_event(event: dict[str, Any]) -> None:
        nonlocal seen
        print(format_event(event), flush=True)
        seen += 1
        if args.count and seen >= args.count:
            done.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, done.set)
    try:
        watcher = k.watch_kites(query, on_event)
    except (KiteError, OSError) as exc:
        print(f"exp2-watch: {exc}", file=sys.stderr)
        k.close()
        return 1
    print(f"watching {query} on {k.config.kontrol_url}", flush=True)
    done.wait()
    try:
        watcher.cancel()
    except KiteError as exc:  # Kontrol may be gone already; local delivery has stopped anyway
        log.info("cancelling the watch: %s", exc)
    k.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
