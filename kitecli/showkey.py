"""``kitecli showkey``: the claims of the local kite.key, in kitectl's order."""

from __future__ import annotations

import argparse
import datetime
from typing import Any

from .errors import EXIT_OK, CliError
from .output import print_json

#: kitectl's order; any other claim follows, sorted.
CLAIM_ORDER = ("sub", "iss", "kontrolURL", "aud", "iat", "jti", "kontrolKey")
#: Claims that are times (seconds since the epoch), shown also in UTC.
TIME_CLAIMS = ("iat", "nbf", "exp")

DESCRIPTION = """\
Print the claims of the local kite.key ($KITE_HOME/kite.key, else ~/.kite/kite.key) in
kitectl's order: sub, iss, kontrolURL, aud, iat, jti, kontrolKey (then any other), times
also in UTC. The key is verified against the kontrolKey it carries first."""


def add_parsers(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("showkey", parents=parents, help="print the claims of the local kite.key",
                              description=DESCRIPTION, epilog="example:\n  kitecli showkey --kite-home ~/.kite",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.set_defaults(run=run)


def ordered_claims(claims: dict[str, Any]) -> dict[str, Any]:
    """The claims in kitectl's order, then the rest sorted by name."""
    first = [name for name in CLAIM_ORDER if name in claims]
    rest = sorted(name for name in claims if name not in CLAIM_ORDER)
    return {name: claims[name] for name in first + rest}


def shown(name: str, value: Any) -> str:
    """A claim as printed: times with their UTC date, a PEM on its own indented lines."""
    if name in TIME_CLAIMS and isinstance(value, (int, float)) and not isinstance(value, bool):
        when = datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
        number = int(value) if float(value).is_integer() else value
        return f"{number} ({when:%Y-%m-%d %H:%M:%S} UTC)"
    text = value if isinstance(value, str) else str(value)
    return text.strip().replace("\n", "\n    ") if "\n" in text else text


def key_problem(exc: Exception) -> str:
    """What is wrong with the local kite.key, in one line."""
    strerror = getattr(exc, "strerror", None)
    return strerror if isinstance(exc, FileNotFoundError) and strerror else str(exc)


def run(args: argparse.Namespace) -> int:
    from kite import KiteKeyError, kitekey

    try:
        key = kitekey.parse()
    except KiteKeyError as exc:
        raise CliError(f"{key_problem(exc)} (get one with: kitecli register --to KONTROL_URL)") from None
    claims = ordered_claims(key.claims)
    if args.json:
        print_json(claims, args)
        return EXIT_OK
    width = max(map(len, claims), default=0)
    for name, value in claims.items():
        text = shown(name, value)
        if "\n" in text:  # a PEM: under its name, indented
            print(f"{name}\n    {text}")
        else:
            print(f"{name.ljust(width)}  {text}")
    return EXIT_OK
