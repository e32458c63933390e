"""Registering through a proxy kite (PROTOCOL.md §8.3): Go's ``RegisterToProxy``.

A kite that cannot be reached directly (behind a NAT, or whose TLS a proxy ends) asks a
proxy kite for a public URL and registers *that* with Kontrol::

    kite ──dials──▶ proxy: register(withArgs [<own URL>]) ──▶ "http://proxy:3999/proxy/<kite id>"
    kite ──────────▶ Kontrol: register("http://proxy:3999/proxy/<kite id>")   (register_forever)
    caller ─getKites─▶ Kontrol, then ──dials──▶ proxy ──forwards──▶ kite

:class:`ProxyRegistrar` runs the loop: find a proxy (at random among the ``getKites``
answers, or the one URL given / ``KITE_PROXY_URL``), dial it, ``register`` (4 s), keep
the public URL registered with Kontrol, wait until the proxy connection drops, and start
again; any failure waits ``kontrol.proxy_retry_interval`` (10 s) and retries. Which proxy
to look for and what to send it is a :class:`ProxyPlan`, so the tunnel proxy (§8.5:
query ``{username: kontrol_user, environment, name: "tunnelproxy"}``, own URL ``""``)
reuses the loop with another plan (:func:`tunnel_plan`).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import gevent
from gevent.event import Event

from kite.auth import KITE_KEY
from kite.config import Config
from kite.wire.protocol import Auth, KontrolQuery

from .errors import KontrolError, ProxyRegisterError

if TYPE_CHECKING:
    from kite.client import Client

    from .client import KontrolClient

log = logging.getLogger("kite.kontrolclient.proxy")

#: Seconds between attempts after a failure to find, dial or register with a proxy
#: (Go's ``proxyRetryDuration``).
PROXY_RETRY_INTERVAL = 10.0
#: Seconds the proxy's ``register`` may take (Go's ``TellWithTimeout("register", 4*time.Second)``).
PROXY_REGISTER_TIMEOUT = 4.0
#: Kite names of the proxies (``reverseproxy.Name``, ``tunnelproxy``'s name).
REVERSE_PROXY_NAME = "proxy"
TUNNEL_PROXY_NAME = "tunnelproxy"
#: Addresses a kite listens on that no proxy can dial back (all interfaces, none given).
_WILDCARD_IPS = ("", "0.0.0.0", "::")
#: Schemes a public URL may have: a SockJS base URL (http/https) or a raw WebSocket one.
_URL_SCHEMES = ("http", "https", "ws", "wss")


@dataclass(frozen=True)
class ProxyPlan:
    """What differs between proxies: how to find one, and what to send its ``register``.

    ``proxy_url``: dial this URL with the kite key (``KITE_PROXY_URL``), else the first
    of ``query``'s ``getKites`` answers in random order. ``own_url()`` is called once,
    when the loop starts: the URL the proxy forwards to (``""`` for a tunnel).
    ``opens_tunnels``: the proxy may call ``kite.tunnel`` over its connection.
    """

    query: KontrolQuery
    proxy_url: str
    own_url: Callable[[], str]
    opens_tunnels: bool = False


def reverse_proxy_query(config: Config) -> KontrolQuery:
    """The default query for reverse proxies: Kontrol's own user, this kite's environment, ``proxy``."""
    return KontrolQuery(username=config.kontrol_user, environment=config.environment, name=REVERSE_PROXY_NAME)


def tunnel_plan(kontrol: KontrolClient, query: Any = None) -> ProxyPlan:
    """The plan of Go's ``RegisterToTunnel`` (§8.5): the ``tunnelproxy`` kites, no own URL."""
    config = kontrol.kite.config
    default = KontrolQuery(username=config.kontrol_user, environment=config.environment, name=TUNNEL_PROXY_NAME)
    return ProxyPlan(_query(query, default), config.proxy_url, lambda: "", opens_tunnels=True)


def reverse_plan(
    kontrol: KontrolClient, proxy_url: str | None = None, query: Any = None, kite_url: str | None = None
) -> ProxyPlan:
    """The plan of :meth:`kite.Kite.register_to_proxy` (see there for the arguments)."""
    config = kontrol.kite.config
    url = config.proxy_url if proxy_url is None else proxy_url
    own = (lambda: str(kite_url)) if kite_url else (lambda: default_own_url(kontrol))
    return ProxyPlan(_query(query, reverse_proxy_query(config)), url, own)


def _query(query: Any, default: KontrolQuery) -> KontrolQuery:
    return default if query is None else KontrolQuery.from_any(query)


def default_own_url(kontrol: KontrolClient) -> str:
    """The URL a proxy can reach this kite at: its ``url`` once it serves, or, when it listens on
    all interfaces, ``register_url()`` (the first non-loopback IPv4 address)."""
    kite = kontrol.kite
    kite.server_ready_notify().wait()  # the port is known (and reachable) only once it serves
    if kite.config.ip in _WILDCARD_IPS:
        return kite.register_url(local=True)
    return kite.url


def sockjs_base_url(url: str) -> str:
    """The URL to dial a proxy kite at: a ``ws(s)://…/kite`` URL (what Go's tunnel proxy
    registers, §8.5) is a SockJS base URL to Go's 2018 client, so it becomes ``http(s)://…/kite``
    (ours would dial a ``ws`` URL as a raw WebSocket); every other URL is kept."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("ws", "wss") and not parts.path.rstrip("/").endswith("/websocket"):
        return urlunsplit(("https" if scheme == "wss" else "http", *parts[1:]))
    return url


def check_public_url(result: Any) -> str:
    """The proxy's answer as a public URL; :class:`ProxyRegisterError` when it is not one."""
    if not isinstance(result, str) or not result:
        raise ProxyRegisterError(f"proxy register: expected a URL string, got {result!r}")
    parts = urlsplit(result)
    if parts.scheme.lower() not in _URL_SCHEMES or not parts.hostname:
        raise ProxyRegisterError(f"proxy register: {result!r} is not an http(s) or ws(s) URL")
    return result


class ProxyRegistrar:
    """The register-through-a-proxy loop of one kite (see the module docstring).

    :meth:`run` blocks until the kite closes. ``public_url`` is the URL the last proxy
    handed out; ``connected`` is set while registered with a proxy.
    """

    def __init__(self, kontrol: KontrolClient, plan: ProxyPlan):
        self.kontrol = kontrol
        self.plan = plan
        #: The public URL the current (or last) proxy returned, or ``None``.
        self.public_url: str | None = None
        #: The proxy connection in use, or ``None``.
        self.proxy: Client | None = None
        #: Set while registered with a proxy; cleared when its connection drops.
        self.connected = Event()

    def run(self) -> None:
        """Run the loop until the kite closes (blocking; run it in a greenlet of your own).

        Raises :class:`~kite.kontrolclient.NoKontrolURLError` at once without a Kontrol URL,
        and :class:`~kite.kontrolclient.KontrolError` when the kite is already closed.
        """
        kontrol = self.kontrol
        kontrol.setup()  # fails fast without a Kontrol URL: retrying cannot fix the configuration
        loop = kontrol._spawn(self._loop)  # killed by kontrol.close(), which ends this call
        try:
            loop.get()  # re-raises what killed the loop (say, no address to give the proxy)
        finally:
            loop.kill(block=False)

    def _loop(self) -> None:
        own_url = self.plan.own_url()
        while True:
            try:
                proxy, lost = self.register_with_proxy(own_url)
            except Exception as exc:
                self._log_failure(exc)
                self._drop(self.proxy)
                gevent.sleep(self.kontrol.proxy_retry_interval)
                continue
            try:
                self._register_public_url()
                lost.wait()
                self.kontrol.kite.log.warning("Disconnected from the proxy at %s; registering again", proxy.url)
            finally:
                self._drop(proxy)

    def register_with_proxy(self, own_url: str) -> tuple[Client, Event]:
        """One step of the loop, without Kontrol: find and dial a proxy, call its ``register``
        with ``own_url``; returns the proxy's connection and an event set when it drops.
        :attr:`public_url` is then the URL the proxy handed out."""
        proxy = self._find()
        self.proxy = proxy
        lost = Event()
        proxy.on_disconnect(lambda _client: lost.set())
        if self.plan.opens_tunnels:
            self.kontrol.kite._tunnel_proxies.add(proxy)
        proxy.dial()
        result = proxy.tell_with_timeout("register", PROXY_REGISTER_TIMEOUT, own_url)
        self.public_url = check_public_url(result)
        self.connected.set()
        self.kontrol.kite.log.info("Registered to the proxy at %s: public URL %s", proxy.url, self.public_url)
        return proxy, lost

    def _find(self) -> Client:
        """An undialed client of the proxy to use: ``plan.proxy_url``, else one of ``getKites``."""
        kite = self.kontrol.kite
        if self.plan.proxy_url:
            client = kite.new_client(sockjs_base_url(self.plan.proxy_url))
            client.auth = Auth(KITE_KEY, kite.kite_key())  # Go does the same; trust that URL
            return client
        try:
            clients = self.kontrol.get_kites(self.plan.query)
        except Exception as exc:
            raise KontrolError(f"Cannot get Proxy kites from Kontrol: {exc}") from exc
        client = random.choice(clients)  # any proxy will do
        client.url = sockjs_base_url(client.url)
        return client

    def _register_public_url(self) -> None:
        """Keep the public URL registered with Kontrol; a failure is retried in the background."""
        assert self.public_url is not None
        try:
            self.kontrol.register_forever(self.public_url)
        except Exception as exc:  # register_forever keeps retrying on its own
            self.kontrol.kite.log.error("Cannot register %s to Kontrol yet: %s", self.public_url, exc)

    def _drop(self, proxy: Client | None) -> None:
        self.connected.clear()
        if proxy is not None:
            self.kontrol.kite._tunnel_proxies.discard(proxy)
            proxy.close()
        if self.proxy is proxy:
            self.proxy = None

    def _log_failure(self, exc: BaseException) -> None:
        self.kontrol.kite.log.error(
            "Cannot register to a proxy: %s Will retry after %g seconds", exc, self.kontrol.proxy_retry_interval
        )
