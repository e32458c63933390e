"""math-register: the math kite, registered to the Kontrol named in kite.key.

Mirrors the Go example ``math-register`` (PROTOCOL.md §11): the kite reads kite.key
(``$KITE_HOME/kite.key`` or ``~/.kite/kite.key``, written by ``kontrol --initial``),
takes the key's ``jti`` as its kite id, serves ``square`` (authentication required,
a bare number) and keeps ``http://<host>:<port>/kite`` registered with
``register_forever``. Run it, then find it with ``examples.exp2_query`` or watch it
with ``examples.exp2_watch``::

    python -m examples.math_register.server                       # port 6667, websocket to Kontrol
    python -m examples.math_register.server --transport xhr_polling --port 6668
    python -m examples.math_register.server --ip 127.0.0.1 --port 0   # any free port

``--transport`` is how this kite dials Kontrol (``config.transport``; ``KITE_TRANSPORT``
too; Go's ``xhrpolling`` spelling is accepted). ``--ip`` defaults to ``KITE_IP`` (else
``0.0.0.0``) and ``--port`` to ``KITE_PORT`` (else 6667). It prints one line when it is
registered and one per call; SIGTERM or Ctrl-C stops it (Kontrol then deregisters it).
"""

from gevent import monkey

monkey.patch_all()  # a server, and the XHR transport uses requests

import argparse  # noqa: E402
import logging  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402

from kite import Kite, Request  # noqa: E402
from kite.config import normalize_transport  # noqa: E402
from kite.drain import StopSignals  # noqa: E402

#: The original's ``-port`` default.
DEFAULT_PORT = 6667

log = logging.getLogger("examples.math_register")


def square(r: Request) -> float:
    """``square(n)``: ``n * n`` for an authenticated caller."""
    number = r.args.one().must_float64()
    result = number * number
    print(f"Call received from {r.username}, sending result {result:g} back", flush=True)
    return result


def build_kite(transport: str | None = None) -> Kite:
    """The math kite with its id set to kite.key's ``jti``, as the Go example does."""
    k = Kite("math", "1.0.0")
    if k.config.id:
        k.id = k.config.id
    else:
        log.warning("kite.key has no jti (or there is no kite.key): keeping the random id %s", k.id)
    if transport:
        k.config.transport = normalize_transport(transport)  # every client this kite makes, Kontrol's too
    k.handle_func("square", square)  # authentication required: config.disable_authentication is False
    return k


def register_url(k: Kite, host: str | None) -> str:
    """``http://<host>:<bound port>/kite``; the host defaults to the listening IP, or localhost for a wildcard."""
    if not host:
        host = "localhost" if k.config.ip in ("", "0.0.0.0", "::") else k.config.ip
    host = f"[{host}]" if ":" in host else host
    return f"http://{host}:{k.port}/kite"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ip", default=None, help="address to listen on (default: KITE_IP, else 0.0.0.0)")
    parser.add_argument("--port", type=int, default=None, help=f"port (default: KITE_PORT, else {DEFAULT_PORT})")
    parser.add_argument("--host", default=None, help="host name in the registered URL (default: the --ip)")
    parser.add_argument("--transport", default=None,
                        help="transport to Kontrol: websocket or xhr_polling (default: KITE_TRANSPORT or websocket)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    k = build_kite(args.transport)
    if not k.config.kontrol_url:
        raise SystemExit("math-register: no Kontrol URL: write a kite.key with `kontrol --initial` "
                         "(or set KITE_KONTROL_URL)")
    if args.ip is not None:
        k.config.ip = args.ip
    k.config.port = args.port if args.port is not None else (k.config.port or DEFAULT_PORT)
    k.on_register(lambda result: print(f"registered to Kontrol as {result.url} (id {k.id})", flush=True))

    server = gevent.spawn(k.run)
    serving_or_failed: list[Any] = [k.server_ready_notify(), server]
    gevent.wait(serving_or_failed, count=1, timeout=15)
    if not k.server_ready_notify().is_set():
        raise SystemExit(f"math kite could not serve on {k.config.ip}:{k.config.port}: {server.exception}")
    # SIGTERM/SIGINT: drain (deregister, let calls finish, close the sessions); again: stop at once.
    # (k.run() in the main greenlet would install these itself; here it runs in a greenlet.)
    StopSignals(k.shutdown, k.close, k.name).install()
    url = register_url(k, args.host)
    print(f"math kite {k.id} serving on {k.url}; registering {url} to {k.config.kontrol_url} "
          f"over {k.config.transport}", flush=True)
    try:
        k.register_forever(url)  # returns after the first success; retries in the background on failure
    except Exception as exc:
        log.error("first registration failed (retrying every %gs): %s", k.kontrol.retry_interval, exc)
    server.join()
    print("math kite stopped", flush=True)


if __name__ == "__main__":
    main()
