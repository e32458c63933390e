"""The Kontrol methods of :class:`~kite.Kite`, as Go's kite has them (§7).

``register``, ``register_forever``, ``register_http``, ``get_kites``,
``dial_kite``, ``watch_kites``, ``get_token``, ``get_key`` & co. are the names a
Go kite user looks for on the kite itself; each one hands the work to the kite's
:class:`~kite.kontrolclient.client.KontrolClient` (``kite.kontrol``), where the
state and the timings live.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from gevent.event import Event

from kite.wire.protocol import RegisterResult

from .client import KontrolClient
from .keyrenewer import KeyRenewer
from .proxyclient import ProxyRegistrar, reverse_plan, tunnel_plan
from .registerurl import register_url as _register_url
from .watch import Watcher

if TYPE_CHECKING:
    from kite.client import Client
    from kite.health import Health
    from kite.kite import Kite


class KontrolMethods:
    """Mixed into :class:`~kite.Kite`: its Kontrol API, delegating to ``self.kontrol``."""

    #: The link to Kontrol (set by :class:`~kite.Kite`).
    kontrol: KontrolClient
    #: ``/healthz`` and ``/readyz`` (set by :class:`~kite.Kite`): registering makes readiness wait for it.
    health: Health

    def setup_kontrol_client(self) -> Client:
        """The shared Kontrol connection (kiteKey auth, redialed forever), created on first use.

        Every Kontrol method calls this; call it early to connect sooner. Raises
        :class:`~kite.kontrolclient.NoKontrolURLError` without ``config.kontrol_url``.
        """
        return self.kontrol.setup()

    def kontrol_ready_notify(self) -> Event:
        """An event set after the first successful registration with Kontrol (any kind)."""
        return self.kontrol.ready_notify()

    def on_register(self, fn: Callable[[RegisterResult], Any]) -> Callable[[RegisterResult], Any]:
        """Run ``fn(result)`` after every successful registration (usable as a decorator).

        Keys Kontrol returns (``kiteKey``/``publicKey``) are applied before the handlers run.
        """
        return self.kontrol.on_register(fn)

    def register(self, url: str) -> RegisterResult:
        """Register ``url`` with Kontrol once, over the Kontrol connection (§7.2).

        Waits up to ``config.timeout`` for the connection and as long for the reply.
        A rotated ``kiteKey``/``publicKey`` in the result is adopted (:meth:`update_auth`).
        Kontrol then drives the built-in ``kite.heartbeat`` on this connection.
        Raises the call's :class:`~kite.errors.KiteError` on failure.
        """
        self.health.expect_registration()
        return self.kontrol.register(url)

    def register_forever(self, url: str) -> None:
        """Register ``url`` and keep it registered, as Go's ``RegisterForever``.

        A failed attempt is retried every ``kontrol.retry_interval`` seconds (10),
        and ``url`` is registered again on every Kontrol reconnect. Returns after
        the first success, or raises the first failure while retrying goes on in
        the background (until :meth:`close`).
        """
        self.health.expect_registration()
        self.kontrol.register_forever(url)

    def register_http(self, url: str) -> RegisterResult:
        """Register ``url`` with ``POST <kontrol>/register`` and heartbeat over HTTP (§7.7).

        Heartbeats (``GET /heartbeat?id=<id>``) go every ``heartbeatInterval``
        seconds; on ``registeragain`` the kite runs :meth:`register_http_forever`.
        A later websocket registration replaces the HTTP heartbeat (one ticker per
        kite). Needs a monkey-patched process (it uses ``requests``). Raises
        :class:`~kite.kontrolclient.RegisterError`.
        """
        self.health.expect_registration()
        return self.kontrol.register_http(url)

    def register_http_forever(
        self,
        url: str,
        *,
        initial: float | None = None,
        multiplier: float | None = None,
        max_interval: float | None = None,
    ) -> RegisterResult:
        """:meth:`register_http` until it works (blocking), with exponential back-off.

        Waits 30 s after the first failure, then x1.7 per failure up to 5 min,
        each +-50 % at random (override per call, or via ``kontrol.http_register_*``).
        """
        self.health.expect_registration()
        return self.kontrol.register_http_forever(
            url, initial=initial, multiplier=multiplier, max_interval=max_interval
        )

    def register_to_proxy(
        self, proxy_url: str | None = None, query: Any = None, *, kite_url: str | None = None
    ) -> None:
        """Register with Kontrol under the public URL of a reverse proxy kite, for ever
        (Go's ``RegisterToProxy``, §8.3). Blocks until the kite closes: run it in a greenlet.

        The proxy is ``proxy_url`` (default ``config.proxy_url``, ``KITE_PROXY_URL``), dialed
        with the kite key; without one, a proxy picked at random among the ``getKites``
        answers to ``query`` (default: Kontrol's user, this kite's environment, name
        ``proxy``), with the token that came with it. Its ``register`` gets ``kite_url``
        (default: :attr:`url` once the kite serves, or :meth:`register_url` when it listens on
        all interfaces) and returns the public URL, which is kept registered with Kontrol
        (:meth:`register_forever`). When the proxy connection drops the loop starts again
        (another proxy, or the same one once back); failures are retried every
        ``kontrol.proxy_retry_interval`` seconds (10). Raises
        :class:`~kite.kontrolclient.NoKontrolURLError` at once without a Kontrol URL.
        """
        self.health.expect_registration()
        ProxyRegistrar(self.kontrol, reverse_plan(self.kontrol, proxy_url, query, kite_url)).run()

    def register_to_tunnel(self, query: Any = None) -> None:
        """Register with Kontrol under the public URL of a tunnel proxy kite, for ever (Go's
        ``RegisterToTunnel``, §8.5). Blocks until the kite closes: run it in a greenlet.

        For a kite nobody can dial (behind a NAT or a firewall); it need not listen at all.
        The proxy is ``config.proxy_url`` (``KITE_PROXY_URL``) or one of the ``getKites``
        answers to ``query`` (default: Kontrol's user, this kite's environment, name
        ``tunnelproxy``). It hands out ``http://<proxy>/proxy?kiteID=<id>``, which is kept
        registered with Kontrol; for every caller of that URL the proxy calls ``kite.tunnel``
        over this kite's connection and the kite dials back one WebSocket per caller, served
        like an incoming connection (its calls are authenticated as usual). Reconnects and
        retries as :meth:`register_to_proxy`.
        """
        self.health.expect_registration()
        ProxyRegistrar(self.kontrol, tunnel_plan(self.kontrol, query)).run()

    def register_url(self, local: bool = True) -> str:
        """The URL to register: ``http(s)://<ip>:<port>/kite`` with the bound port (§1.6).

        ``local``: the first non-loopback IPv4 address of the host. Otherwise
        ``config.ip``, which must then be a public IP (nothing is fetched from the
        internet). Raises :class:`~kite.kontrolclient.RegisterURLError`.
        """
        return _register_url(cast("Kite", self), local)

    def get_kites(self, query: Any = None, **fields: str) -> list[Client]:
        """The kites matching ``query`` (a dict, :class:`KiteIdentity`, ``KontrolQuery`` or keyword fields).

        Returns **undialed** clients (``.kite``, ``.url``, token ``.auth``) whose
        tokens renew themselves through Kontrol ``getToken`` while connected.
        Raises :class:`~kite.kontrolclient.NoKitesAvailableError` when none matches.
        """
        return self.kontrol.get_kites(query, **fields)

    def dial_kite(self, query: Any = None, timeout: float | None = None, **fields: str) -> Client:
        """Dial one of the kites matching ``query``, in random order, failing over to the next.

        Returns the dialed client; raises the last dial error if none answers
        (``timeout`` bounds each dial; default: the client's dial timeout).
        """
        return self.kontrol.dial_kite(query, timeout, **fields)

    def watch_kites(self, query: Any, callback: Callable[[dict[str, Any]], Any], **fields: str) -> Watcher:
        """Call ``callback(event)`` for matching kites registering and deregistering.

        The current kites arrive first as ``REGISTER`` events. Note that Go Kontrols
        ignore watching (§7.9). Returns a :class:`~kite.kontrolclient.Watcher`; ``.cancel()`` stops it.
        """
        return self.kontrol.watch_kites(query, callback, **fields)

    def get_token(self, query: Any, force: bool = False) -> str:
        """A Kontrol token for the one kite ``query`` matches (``getToken``, §7.4).

        ``force`` asks a 2018 Kontrol for a fresh token instead of a cached one.
        """
        return self.kontrol.get_token(query, force)

    def get_key(self) -> str:
        """Fetch Kontrol's public key (``getKey``) and trust it from now on (``config.kontrol_key``)."""
        return self.kontrol.get_key()

    def tell_kontrol_with_timeout(self, method: str, timeout: float | None, *args: Any) -> Any:
        """Call any Kontrol ``method``; waits up to ``config.timeout`` for the connection
        (else :class:`~kite.errors.TimeoutError`) and ``timeout`` seconds for the reply."""
        return self.kontrol.tell(method, timeout, *args)

    def new_key_renewer(self, interval: float) -> KeyRenewer:
        """Call :meth:`get_key` every ``interval`` seconds; returns a handle with ``.stop()``."""
        return self.kontrol.new_key_renewer(interval)
