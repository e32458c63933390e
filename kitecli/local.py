"""kitecli's own kite, and turning what can go wrong on the wire into kitecli's errors.

kitecli is a kite named ``kitecli``: its config comes from the local kite.key (when
there is one) and the ``KITE_*`` variables, as any kite's does.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from . import __version__
from .errors import AnsweredError, CliError, UnreachableError, UsageError

if TYPE_CHECKING:
    from kite import Client, Kite, KiteError

#: The URL schemes a kite URL may have (``http(s)``: SockJS; ``ws(s)``: raw WebSocket).
URL_SCHEMES = ("http", "https", "ws", "wss")


def kite_url(text: str) -> str:
    """A kite URL from what the user typed: ``host:port`` means ``http://host:port/kite``."""
    url = text if "://" in text else f"http://{text}"
    parts = urlsplit(url)
    if parts.scheme.lower() not in URL_SCHEMES or not parts.hostname:
        raise UsageError(f"invalid kite URL {text!r} (expected http(s)://host:port/kite or ws(s)://…)")
    try:
        parts.port  # noqa: B018 - validates the port
    except ValueError:
        raise UsageError(f"invalid port in kite URL {text!r}") from None
    if parts.path in ("", "/") and parts.scheme.lower() in ("http", "https"):
        url = url.rstrip("/") + "/kite"
    return url


def local_kite(args: argparse.Namespace) -> Kite:
    """kitecli's kite: config from kite.key and ``KITE_*``, the chosen transport, and TLS checks
    off for every client it makes when ``--insecure`` is given."""
    from kite import Config, Kite, KiteKeyError

    try:
        config = Config.get(kite_key_required=False)
    except KiteKeyError as exc:
        raise CliError(str(exc)) from None
    config.transport = args.transport
    config.timeout = args.timeout
    config.dial_timeout = args.timeout
    k = Kite("kitecli", __version__, config)
    k.set_log_level("DEBUG" if args.verbose else "WARNING")
    if args.insecure:
        new_client = k.new_client

        def insecure_client(url: str, transport: str | None = None) -> Client:
            client = new_client(url, transport)
            client.verify = False
            return client

        k.new_client = insecure_client  # type: ignore[method-assign]  # --insecure: every client, Kontrol's too
    return k


def answered(exc: KiteError) -> AnsweredError:
    """The kite's error as kitecli reports it: ``type: message``."""
    details: dict[str, object] = {"type": exc.type, "message": exc.message}
    if exc.code:
        details["code"] = exc.code
    return AnsweredError(f"{exc.type}: {exc.message}", details=details)


def dial(k: Kite, url: str, args: argparse.Namespace, auth: Any = None) -> Client:
    """A connected client for ``url`` (within ``--timeout``); :class:`UnreachableError` when it cannot be."""
    client = k.new_client(url)
    client.auth = auth
    try:
        client.dial_timeout(args.timeout)
    except (OSError, TimeoutError) as exc:  # DialError is a ConnectionError; a dial timeout also a TimeoutError
        client.close()
        raise UnreachableError(f"cannot reach {url}: {exc}") from None
    return client


@contextmanager
def kite_errors() -> Iterator[None]:
    """Report a kite error raised inside as :func:`answered` (exit 1)."""
    from kite import KiteError

    try:
        yield
    except KiteError as exc:
        raise answered(exc) from None
