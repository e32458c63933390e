"""A proxy's table: which backend kite answers for which kite id (PROTOCOL.md §8.4, §8.5).

A kite registers over its connection to the proxy, under the kite id it sent with its
calls -- with its own (private) URL for the reverse proxy, with none for the tunnel proxy,
which reaches it over that connection; it is removed when that connection closes. Since the id
is only *claimed* (kites authenticate with their user's kite key or a token, which say
nothing of the id), the table binds every id to the **user** that registered it:

* while an entry lives, ``register`` of the same id by **another user** is refused
  (:class:`~kite.proxy.errors.KiteIdTakenError`); by the **same user** it replaces the
  entry (a kite that reconnected before its old connection was noticed dead);
* after the entry is removed the id stays **reserved** to its user for
  :data:`RESERVE_SECONDS`, because Kontrol may still list the public URL
  ``/proxy/<id>`` and callers (with tokens meant for that kite) could otherwise be
  forwarded to another user's kite that grabbed the id.

Reservations live in memory only: after a proxy restart the first user to register an id
gets it, which is why kites should keep unguessable ids (the default: a random UUID).
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from kite.errors import ArgumentError

from .errors import KiteIdTakenError

if TYPE_CHECKING:
    from kite.client import Client

#: Kite ids the proxy accepts: they become one path segment of the public URL, so only
#: URL-safe characters, starting with a letter or digit (no ``.``/``..``), at most 128 of
#: them (a UUID has 36).
KITE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._~-]{0,127}$")
#: Seconds an id stays reserved to its user after its entry went away: longer than a kite
#: takes to come back (its reconnect back-off is capped at 60 s, the proxy retry is 10 s),
#: so it gets its id back before anyone else can, and long enough for Kontrol to forget a
#: kite whose Kontrol connection died too.
RESERVE_SECONDS = 600.0
#: Reservations kept at most (oldest dropped first): ~200 bytes each, so a flood of
#: registrations under fresh ids cannot grow the proxy's memory without bound.
MAX_RESERVATIONS = 100_000
#: Schemes a backend URL may have, and the scheme each kind of forwarding uses for it:
#: WebSockets keep TLS when the kite serves it (as Go's ``replaceSchemeWithWS``), plain
#: HTTP always goes to ``http`` (TLS ends at the proxy, §8.4).
_WS_SCHEME = {"http": "ws", "ws": "ws", "https": "wss", "wss": "wss"}


@dataclass(eq=False)
class Backend:
    """One registered kite: its id and user, the URL it registered (``""`` behind a tunnel),
    where to forward to, its connection to the proxy (``client``) and the relays (or
    tunnels) open to it."""

    kite_id: str
    username: str
    url: str
    client: Client
    ws_base: str
    http_base: str
    #: Live :class:`~kite.proxy.relay.Relay` (or :class:`~kite.proxy.tunnels.Tunnel`) objects to this backend.
    relays: set[Any] = field(default_factory=set)

    def __repr__(self) -> str:
        return f"<Backend {self.kite_id} of {self.username} at {self.url}>"


def backend_bases(url: str) -> tuple[str, str]:
    """``(ws_base, http_base)`` for a registered kite URL, without a trailing ``/``.

    ``http://10.0.4.17:6000/kite`` gives ``ws://10.0.4.17:6000/kite`` and
    ``http://10.0.4.17:6000/kite``. Raises :class:`~kite.errors.ArgumentError` for
    anything but an absolute ``http``/``https``/``ws``/``wss`` URL with a host.
    """
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        raise ArgumentError(f"invalid kite URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in _WS_SCHEME or not parts.hostname:
        raise ArgumentError(f"invalid kite URL {url!r}: expected http(s)://host:port/kite")
    if parts.username is not None or parts.fragment:
        raise ArgumentError(f"invalid kite URL {url!r}: no user info or fragment allowed")
    path = parts.path.rstrip("/")
    ws_base = urlunsplit((_WS_SCHEME[scheme], parts.netloc, path, "", ""))
    return ws_base, urlunsplit(("http", parts.netloc, path, "", ""))


class Registry:
    """Backends by kite id, with the per-user binding of ids (see the module docstring)."""

    def __init__(
        self,
        reserve_seconds: float = RESERVE_SECONDS,
        max_reservations: int = MAX_RESERVATIONS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.reserve_seconds = reserve_seconds
        self.max_reservations = max_reservations
        self._clock = clock
        self._backends: dict[str, Backend] = {}
        self._by_client: dict[Client, set[str]] = {}
        self._reserved: OrderedDict[str, tuple[str, float]] = OrderedDict()  # id -> (username, until)

    def __len__(self) -> int:
        return len(self._backends)

    def get(self, kite_id: str) -> Backend | None:
        """The backend registered under ``kite_id``, or ``None``."""
        return self._backends.get(kite_id)

    def backends(self) -> list[Backend]:
        """Every registered backend."""
        return list(self._backends.values())

    def add(self, kite_id: str, username: str, url: str, client: Client) -> tuple[Backend, Backend | None]:
        """Register ``url`` under ``kite_id`` for ``username``; returns the entry and the one it replaced.

        ``url`` ``""``: a kite reached over ``client`` itself (a tunnel), nothing to forward to.
        Raises :class:`~kite.errors.ArgumentError` for a bad id or URL and
        :class:`~kite.proxy.errors.KiteIdTakenError` when another user holds the id.
        """
        if not KITE_ID.match(kite_id):
            raise ArgumentError(f"invalid kite id {kite_id!r}: expected letters, digits, '.', '_', '~', '-'")
        ws_base, http_base = backend_bases(url) if url else ("", "")
        holder = self._backends.get(kite_id)
        if holder is not None and holder.username != username:
            raise KiteIdTakenError(f"kite id {kite_id} is registered by another user")
        reserved = self._reserved.get(kite_id)
        if reserved is not None and reserved[0] != username and reserved[1] > self._clock():
            raise KiteIdTakenError(f"kite id {kite_id} was registered by another user moments ago")
        self._reserved.pop(kite_id, None)
        backend = Backend(kite_id, username, url, client, ws_base, http_base)
        if holder is not None:
            self._forget_client_id(holder.client, kite_id)
        self._backends[kite_id] = backend
        self._by_client.setdefault(client, set()).add(kite_id)
        return backend, holder

    def remove(self, backend: Backend) -> bool:
        """Remove ``backend`` if it is still the entry of its id, reserving the id to its user."""
        if self._backends.get(backend.kite_id) is not backend:
            return False
        del self._backends[backend.kite_id]
        self._forget_client_id(backend.client, backend.kite_id)
        self._reserve(backend.kite_id, backend.username)
        return True

    def remove_client(self, client: Client) -> list[Backend]:
        """Remove every entry registered over ``client`` (its connection closed); returns them."""
        removed = []
        for kite_id in list(self._by_client.get(client, ())):
            backend = self._backends.get(kite_id)
            if backend is not None and backend.client is client and self.remove(backend):
                removed.append(backend)
        self._by_client.pop(client, None)
        return removed

    def _forget_client_id(self, client: Client, kite_id: str) -> None:
        ids = self._by_client.get(client)
        if ids is not None:
            ids.discard(kite_id)
            if not ids:
                del self._by_client[client]

    def _reserve(self, kite_id: str, username: str) -> None:
        now = self._clock()
        self._reserved.pop(kite_id, None)
        self._reserved[kite_id] = (username, now + self.reserve_seconds)
        while self._reserved:  # drop the expired ones and any beyond the cap, oldest first
            oldest_id, (_user, until) = next(iter(self._reserved.items()))
            if until > now and len(self._reserved) <= self.max_reservations:
                break
            del self._reserved[oldest_id]
