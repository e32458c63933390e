"""``kitecli tell URL METHOD [ARGS…]``: call one method of a kite and print its result as JSON."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from .errors import EXIT_OK, UsageError
from .output import print_json, print_json_line
from .values import call_argument, duration

DESCRIPTION = """\
Call METHOD of the kite at URL with ARGS and print the result as JSON (indented on a
terminal, one line when piped). Each ARG is JSON when it parses (4, "4", '{"a":1}',
[1,2], true, null), else a plain string. kitectl's spelling works too:
kitecli tell -to URL -method NAME ARGS…"""

EPILOG = """\
examples:
  kitecli tell http://127.0.0.1:3636/kite square 4
  kitecli tell 127.0.0.1:3636 kite.systemInfo
  kitecli tell --callback --wait 2s ws://127.0.0.1:3636/kite/websocket countdown 3
  kitecli tell -to http://127.0.0.1:3636/kite -method square -timeout 10s 12

auth: the local kite.key (kiteKey) when there is one; --token for a Kontrol token;
--no-auth to send none."""


def add_parsers(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("tell", parents=parents, help="call a method of a kite and print its result",
                              description=DESCRIPTION, epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("words", nargs="*", metavar="URL METHOD ARGS", help="the kite's URL, the method, its arguments")
    p.add_argument("-to", "--to", dest="to", metavar="URL", help="the kite's URL (kitectl's spelling)")
    p.add_argument("-method", "--method", dest="method", metavar="NAME", help="the method (kitectl's spelling)")
    p.add_argument("-timeout", dest="timeout", type=duration, default=argparse.SUPPRESS, metavar="DURATION",
                   help="same as --timeout (kitectl's spelling)")
    auth = p.add_mutually_exclusive_group()
    auth.add_argument("--token", metavar="TOKEN", help="authenticate with this Kontrol token")
    auth.add_argument("--no-auth", action="store_true", help="send no credentials")
    p.add_argument("--callback", action="store_true",
                   help='append a function argument; each call of it prints {"callback": [args…]}')
    p.add_argument("--wait", type=duration, default=0.0, metavar="DURATION",
                   help="with --callback: how long to wait after the result for more calls (default 0s)")
    p.set_defaults(run=run)


def _auth(args: argparse.Namespace, kite_key: str) -> Any:
    from kite import Auth

    if args.no_auth:
        return None
    if args.token:
        return Auth("token", args.token)
    return Auth("kiteKey", kite_key) if kite_key else None


def run(args: argparse.Namespace) -> int:
    words = list(args.words)
    url = args.to or (words.pop(0) if words else None)
    method = args.method or (words.pop(0) if words else None)
    if not url:
        raise UsageError("missing URL: kitecli tell URL METHOD [ARGS…]")
    if not method:
        raise UsageError("missing METHOD: kitecli tell URL METHOD [ARGS…]")

    import gevent

    from .local import dial, kite_errors, kite_url, local_kite

    url = kite_url(url)
    call_args: list[Any] = [call_argument(w) for w in words]
    if args.callback:
        call_args.append(lambda *a: print_json_line({"callback": list(a)}))
    k = local_kite(args)
    try:
        client = dial(k, url, args, _auth(args, k.config.kite_key))
        try:
            with kite_errors():
                result = client.tell_with_timeout(method, args.timeout, *call_args)
            print_json(result, args)
            if args.callback and args.wait:
                gevent.sleep(args.wait)
        finally:
            client.close()
    finally:
        k.close()
    sys.stdout.flush()
    return EXIT_OK
