"""``kitecli query`` and ``kitecli watch``: the kites Kontrol knows, now and as they come and go."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from .errors import EXIT_INTERRUPTED, EXIT_OK, AnsweredError, UnreachableError, UsageError
from .output import print_json, print_json_line, table

if TYPE_CHECKING:
    from kite import Kite, KontrolQuery

#: The query flags, in the order Kontrol's query path has them.
QUERY_FIELDS = ("username", "environment", "name", "version", "region", "hostname", "id")

QUERY_DESCRIPTION = """\
List the kites registered with Kontrol that match the query: one line per kite with its
query path (/username/environment/name/version/region/hostname/id) and URL. Kontrol is the
one named in the local kite.key (or --kontrol); the username defaults to the key's own.
As in Kontrol's queries, a field may be given only when the ones before it are. Exits 1
with "no kites found" when none matches."""

WATCH_DESCRIPTION = """\
Stream REGISTER and DEREGISTER events of the kites matching the query, one line each (the
kites there already come first, as REGISTER), until Ctrl-C (exit 130)."""


def add_parsers(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    for name, text, description, run in (
        ("query", "list the kites Kontrol knows that match a query", QUERY_DESCRIPTION, run_query),
        ("watch", "stream kites registering and deregistering with Kontrol", WATCH_DESCRIPTION, run_watch),
    ):
        p = subparsers.add_parser(name, parents=parents, help=text, description=description,
                                  epilog=f"example:\n  kitecli {name} --environment production --name math",
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        for field in QUERY_FIELDS:
            p.add_argument(f"--{field}", f"-{field}", default="", metavar=field.upper())
        p.add_argument("--kontrol", metavar="URL", help="Kontrol's URL (default: the kite.key's kontrolURL)")
        p.set_defaults(run=run)


def check_fields(args: argparse.Namespace) -> None:
    """Kontrol's rule, checked before asking it: a field may be given only with every one before it
    (the username is always there: it defaults to the kite.key's)."""
    for index, field in enumerate(QUERY_FIELDS[2:], 2):
        missing = [f for f in QUERY_FIELDS[1:index] if not getattr(args, f)]
        if getattr(args, field) and missing:
            raise UsageError(f"--{field} needs --{missing[0]} too (a query names its fields in order: "
                             + ", ".join(QUERY_FIELDS) + ")")


def _query(args: argparse.Namespace, k: Kite) -> KontrolQuery:
    from kite import KontrolQuery

    fields = {f: getattr(args, f) for f in QUERY_FIELDS}
    fields["username"] = fields["username"] or k.config.username
    return KontrolQuery(**fields)


def _kontrol_kite(args: argparse.Namespace) -> Kite:
    from .local import kite_url, local_kite

    check_fields(args)
    k = local_kite(args)
    if args.kontrol:
        k.config.kontrol_url = kite_url(args.kontrol)
    if not k.config.kontrol_url:
        k.close()
        raise UsageError("no Kontrol to ask: give --kontrol URL, or get a kite.key with kitecli register")
    return k


def path(kite: dict[str, Any]) -> str:
    """A kite's query path: ``/username/environment/name/version/region/hostname/id``."""
    return "/" + "/".join(str(kite.get(f, "")) for f in QUERY_FIELDS)


def _kontrol_errors(k: Kite, exc: BaseException) -> Exception:
    """Kontrol failures as kitecli reports them: unreachable (2) or answered (1)."""
    from kite import KiteError

    from .local import answered

    if isinstance(exc, KiteError) and exc.type == "timeout" and not k.kontrol.connected:
        return UnreachableError(f"cannot reach Kontrol at {k.config.kontrol_url}: {exc.message}")
    if isinstance(exc, KiteError):
        return answered(exc)
    return UnreachableError(f"cannot reach Kontrol at {k.config.kontrol_url}: {exc}")


def run_query(args: argparse.Namespace) -> int:
    from kite import KiteError, NoKitesAvailableError

    k = _kontrol_kite(args)
    try:
        try:
            clients = k.get_kites(_query(args, k))
        except NoKitesAvailableError:
            raise AnsweredError("no kites found") from None
        except (KiteError, OSError) as exc:
            raise _kontrol_errors(k, exc) from None
        found = [(c.kite.to_wire(), c.url) for c in clients]
        for c in clients:
            c.close()
    finally:
        k.close()
    if args.json:
        print_json([{"kite": kite, "url": url} for kite, url in found], args)
    else:
        print(table([[path(kite), url] for kite, url in found], header=["KITE", "URL"]), flush=True)
    return EXIT_OK


def run_watch(args: argparse.Namespace) -> int:
    import gevent.event

    from kite import KiteError

    k = _kontrol_kite(args)

    def show(event: dict[str, Any]) -> None:
        if args.json:
            print_json_line(event)
        else:
            kite = event.get("kite")
            url = event.get("url") or ""
            kite = kite if isinstance(kite, dict) else {}
            print(f"{event.get('action', '?')} {path(kite)} {url}".rstrip(), flush=True)

    try:
        try:
            watcher = k.watch_kites(_query(args, k), show)
        except (KiteError, OSError) as exc:
            raise _kontrol_errors(k, exc) from None
        try:
            gevent.event.Event().wait()  # until Ctrl-C
        except KeyboardInterrupt:
            try:
                watcher.cancel()
            except Exception:  # noqa: BLE001 - Kontrol may be gone; the watch ends with us anyway
                pass
            return EXIT_INTERRUPTED
    finally:
        k.close()
    return EXIT_OK
