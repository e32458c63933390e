"""``kitecli register --to KONTROL_URL``: get a kite.key from Kontrol through ``registerMachine``.

The original kitectl sent ``["<username>"]``, which its own Kontrol refuses (it wants an
object); kitecli sends ``{"authType": "password", "password": …}``, what a Kontrol started
with ``--machine-password-file`` checks. The key is self-verified, must be for the user
asked for, and is written atomically with mode 0600.
"""

from __future__ import annotations

import argparse
import getpass
import os
import sys
from typing import Any

from .errors import EXIT_OK, CliError, UsageError
from .output import print_json

#: How long Kontrol may take to answer registerMachine (kitectl waited 5 minutes).
REGISTER_TIMEOUT = 300.0
#: The environment variable a password may come from (for scripts; a file is better).
PASSWORD_ENV = "KITE_MACHINE_PASSWORD"

DESCRIPTION = """\
Ask the Kontrol at --to for a kite key (registerMachine) and write it to kite.key
($KITE_HOME/kite.key, else ~/.kite/kite.key; mode 0600, replaced atomically). An existing
kite.key is kept unless --force is given. The username is prompted for on a terminal and
required (--username) otherwise; the machine password comes from --password-file, else
$KITE_MACHINE_PASSWORD, else a prompt on a terminal. The Kontrol must allow it: start it
with --machine-password-file (its default refuses every registerMachine)."""


def add_parsers(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("register", parents=parents, help="get a kite.key from Kontrol (registerMachine)",
                              description=DESCRIPTION,
                              epilog="example:\n  kitecli register --to https://kontrol.example.com/kite "
                                     "--username alice --password-file ~/.kite-password",
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--to", "-to", required=True, metavar="KONTROL_URL", help="the Kontrol's URL")
    p.add_argument("--username", "-username", default="", metavar="USER", help="whose kite key (default: ask)")
    p.add_argument("--password-file", metavar="FILE", help="file holding the machine password")
    p.add_argument("--force", action="store_true", help="replace an existing kite.key")
    p.set_defaults(run=run)


def _username(args: argparse.Namespace) -> str:
    if args.username:
        return str(args.username)
    if not sys.stdin.isatty():
        raise UsageError("--username is required when not on a terminal")
    name = input("username: ").strip()
    if not name:
        raise UsageError("no username given")
    return name


def _password(args: argparse.Namespace) -> str:
    if args.password_file:
        try:
            with open(args.password_file) as f:
                return f.read().strip()
        except OSError as exc:
            raise UsageError(f"--password-file: {exc.strerror or exc}: {args.password_file}") from None
    if os.environ.get(PASSWORD_ENV):
        return os.environ[PASSWORD_ENV]
    if sys.stdin.isatty():
        return getpass.getpass("machine password: ")
    return ""


def run(args: argparse.Namespace) -> int:
    from kite import KiteError, KiteKeyError, kitekey

    from .local import answered, dial, kite_url, local_kite

    path = kitekey.key_path()
    if os.path.exists(path) and not args.force:
        raise CliError(f"a kite.key exists at {path}; use --force to replace it")
    url = kite_url(args.to)
    username = _username(args)
    password = _password(args)
    k = local_kite(args)
    k.config.username = username  # the identity registerMachine issues the key for
    try:
        client = dial(k, url, args)
        try:
            key = client.tell_with_timeout("registerMachine", max(args.timeout, REGISTER_TIMEOUT),
                                           {"authType": "password", "password": password})
        except KiteError as exc:
            raise answered(exc) from None
        finally:
            client.close()
    finally:
        k.close()
    try:
        parsed = kitekey.parse(key if isinstance(key, str) else "")
    except KiteKeyError as exc:
        raise CliError(f"Kontrol at {url} answered with an invalid kite key: {exc}") from None
    if parsed.username != username:
        raise CliError(f"Kontrol at {url} issued a kite key for {parsed.username!r}, not {username!r}")
    written = kitekey.write(parsed.raw)
    if args.json:
        print_json({"path": written, "username": parsed.username, "kontrolURL": parsed.kontrol_url,
                    "issuer": parsed.kontrol_user}, args)
    else:
        print(f"wrote the kite.key of {parsed.username!r} (issued by {parsed.kontrol_user!r}, "
              f"Kontrol {parsed.kontrol_url}) to {written}", flush=True)
    return EXIT_OK
