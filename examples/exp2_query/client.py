"""exp2-query: find a math kite through Kontrol, dial it and call ``square`` with token auth.

Mirrors the Go example ``exp2-query`` (PROTOCOL.md §11): kite.key (``$KITE_HOME/kite.key``
or ``~/.kite/kite.key``) names the user and the Kontrol; ``get_kites`` asks Kontrol
for the ``math`` kites of that user and environment, each result coming with a
Kontrol token (renewed before it expires); the first one is dialed forever and asked
for ``square`` of a bare number. Start a registered math kite first::

    python -m examples.math_register.server --ip 127.0.0.1 &
    python -m examples.exp2_query.client                 # prints "square(4) = 16"
    python -m examples.exp2_query.client --arg 7 --environment production

``--username`` and ``--environment`` default to the kite's config (kite.key's ``sub``,
``KITE_USERNAME``, ``KITE_ENVIRONMENT``); ``--kontrol-url`` to kite.key's ``kontrolURL``
(or ``KITE_KONTROL_URL``). Exits with status 1 and the error when no kite is found or the
call fails.
"""

from gevent import monkey

monkey.patch_all()  # so that KITE_TRANSPORT=xhr_polling (requests) cooperates too

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402

from kite import Kite, KiteError  # noqa: E402

log = logging.getLogger("examples.exp2_query")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="math", help="kite name to look for")
    parser.add_argument("--username", default=None, help="default: the kite.key's user")
    parser.add_argument("--environment", default=None, help="default: KITE_ENVIRONMENT (else 'unknown')")
    parser.add_argument("--kontrol-url", default=None, help="default: the kite.key's kontrolURL")
    parser.add_argument("--arg", type=float, default=4, help="the number to square")
    parser.add_argument("--timeout", type=float, default=10, help="seconds for the dial and the call")
    return parser.parse_args(argv)


def query(k: Kite, args: argparse.Namespace) -> float:
    """Find ``args.name`` kites, dial the first with its token, and return ``square(args.arg)``."""
    username = args.username or k.config.username
    environment = args.environment or k.config.environment
    kites = k.get_kites(username=username, environment=environment, name=args.name)
    print(f"found {len(kites)} {args.name} kite(s) of {username}/{environment}: "
          + ", ".join(f"{c.kite.id} at {c.url}" for c in kites), flush=True)
    math = kites[0]  # an undialed client whose auth is the Kontrol token
    try:
        if not math.dial_forever().wait(args.timeout):
            raise KiteError(f"could not connect to {math.url} within {args.timeout:g} s")
        return float(math.tell_with_timeout("square", args.timeout, args.arg))
    finally:
        for client in kites:
            client.close()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    k = Kite("exp2", "1.0.0")  # reads kite.key: our user, Kontrol's URL and key
    if args.kontrol_url:
        k.config.kontrol_url = args.kontrol_url
    try:
        result = query(k, args)
    except (KiteError, OSError) as exc:
        print(f"exp2-query: {exc}", file=sys.stderr)
        return 1
    finally:
        k.close()
    print(f"square({args.arg:g}) = {result:g}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
