"""What the reverse and the tunnel proxy share (PROTOCOL.md §8.3–§8.5).

:class:`ProxyKite` is a kite with one authenticated method, ``register``, whose callers
become :class:`~kite.proxy.registry.Backend` entries bound to their user; an entry lasts as
long as the backend's connection to the proxy, and a backend that stops answering
``kite.ping`` on it is forgotten (its relays or tunnels closed). The proxy registers
itself with Kontrol only once it listens. :func:`run_command` is the common ``main`` of
the two commands.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent.pool import Group

from kite.config import Config, ConfigError, parse_duration
from kite.kite import Kite
from kite.kitekey import KiteKeyError
from kite.transport.wsgi import make_server

from .forward import ForwardingHandler
from .registry import Backend, Registry
from .relay import CLOSE_BAD_GATEWAY, IDLE_TIMEOUT

if TYPE_CHECKING:
    from gevent.pywsgi import WSGIServer

    from kite.client import Client
    from kite.request import Request

#: Seconds between two ``kite.ping`` rounds over the backends' connections: a backend
#: whose host vanished (no FIN, no RST) is found out within a minute, at one tiny call
#: per backend and half-minute.
LIVENESS_INTERVAL = 30.0
#: Seconds a backend has to answer that ``kite.ping``.
PING_TIMEOUT = 10.0

log = logging.getLogger("kite.proxy")


class ProxyKite(Kite):
    """A proxy kite: the ``register`` method, the table of backends, their liveness, and
    registering itself with Kontrol once listening (``register_self``, default ``True``).

    Subclasses say what ``register`` takes (:meth:`_backend_url`) and hands out
    (:meth:`public_url`), and which URL the proxy registers (:attr:`self_url`).
    """

    def __init__(self, name: str, version: str, config: Config | None = None):
        super().__init__(name, version, config)
        #: Register with Kontrol once listening (:meth:`run`).
        self.register_self = True
        #: Seconds between ``kite.ping`` rounds over the backends' connections, and their timeout.
        self.liveness_interval = LIVENESS_INTERVAL
        self.ping_timeout = PING_TIMEOUT
        self.registry = Registry()
        method = self.handle_func("register", self._register)
        method.auth_required = True  # the id is bound to the authenticated user, so there must be one
        self.allow_other_users("register")  # kites of every user of this Kontrol may register
        self.on_disconnect(self._peer_gone)
        self._greenlets = Group()
        self._liveness: gevent.Greenlet[[], None] | None = None

    # -- what subclasses define ---------------------------------------------------------

    def public_url(self, kite_id: str) -> str:
        """The URL handed out to the kite ``kite_id``."""
        raise NotImplementedError

    @property
    def self_url(self) -> str:
        """The URL the proxy registers with Kontrol."""
        raise NotImplementedError

    def _backend_url(self, r: Request) -> str:
        """The URL ``register``'s caller gave to forward to (``""``: none, reached over its connection)."""
        raise NotImplementedError

    @property
    def http_scheme(self) -> str:
        """``https`` when the proxy serves TLS, else ``http``."""
        return "https" if self._ssl_context is not None else "http"

    # -- register ------------------------------------------------------------------------

    def _register(self, r: Request) -> str:
        """``register``: remember the caller under its kite id, return its public URL."""
        url = self._backend_url(r)
        kite_id = r.client.kite.id
        backend, replaced = self.registry.add(kite_id, r.username, url, r.client)
        if replaced is not None and replaced.client is not r.client:
            log.info("kite %s of %s registered again from %s; the entry from %s is replaced",
                     kite_id, r.username, r.client.remote_addr, replaced.client.remote_addr)
        public = self.public_url(kite_id)
        log.info("kite %s of %s (%s) registered%s; public URL %s", kite_id, r.username,
                 r.client.remote_addr, f" {backend.url}" if backend.url else "", public)
        self._start_liveness()
        return public

    def _peer_gone(self, client: Client) -> None:
        for backend in self.registry.remove_client(client):
            log.info("kite %s of %s removed: its connection to the proxy closed", backend.kite_id, backend.username)

    def forget(self, backend: Backend, why: str) -> None:
        """Drop ``backend``: its entry, its relays or tunnels (closed with 1014) and its connection."""
        if self.registry.remove(backend):
            log.warning("kite %s of %s forgotten: %s", backend.kite_id, backend.username, why)
        for relay in list(backend.relays):
            relay.close(CLOSE_BAD_GATEWAY, "backend went away", why)
        backend.client.close()

    # -- liveness ------------------------------------------------------------------------

    def _start_liveness(self) -> None:
        if self.liveness_interval > 0 and (self._liveness is None or self._liveness.dead):
            self._liveness = self._greenlets.spawn(self._liveness_loop)

    def _liveness_loop(self) -> None:
        while len(self.registry):
            gevent.sleep(self.liveness_interval)
            pings = [self._greenlets.spawn(self._ping, b) for b in self.registry.backends()]
            gevent.joinall(pings)

    def _ping(self, backend: Backend) -> None:
        try:
            backend.client.tell_with_timeout("kite.ping", self.ping_timeout)
        except Exception as exc:
            if self.registry.get(backend.kite_id) is backend:
                self.forget(backend, f"no answer to kite.ping ({exc})")

    # -- serving -------------------------------------------------------------------------

    def _make_server(self) -> WSGIServer:
        """The server, with the handler that asks ``upgrade_gate`` before a ``/proxy/`` WebSocket upgrade."""
        return make_server(self, self.config.ip, self.config.port, ssl_context=self._ssl_context,
                           handler_class=ForwardingHandler)

    def run(self, handle_signals: bool | None = None) -> None:
        """Listen, then register with Kontrol (``register_self``), and serve until :meth:`close`
        (stop signals: as :meth:`kite.Kite.run`).

        A failed bind raises before anything is registered.
        """
        registrar = self._greenlets.spawn(self._register_when_listening)
        try:
            super().run(handle_signals)
        finally:
            registrar.kill(block=False)

    def _register_when_listening(self) -> None:
        self.server_ready_notify().wait()
        if not self.register_self:
            return
        if not self.config.kontrol_url:
            log.warning("no Kontrol URL (kite.key or KITE_KONTROL_URL): not registering %s", self.self_url)
            return
        log.info("Registering with register url %s", self.self_url)
        try:
            self.register_forever(self.self_url)
        except Exception as exc:  # register_forever retries in the background
            log.error("Cannot register to Kontrol yet: %s", exc)

    def close(self) -> None:
        """Stop serving and registering, and close the backend connections."""
        self._greenlets.kill(block=False)
        super().close()


# -- the commands ---------------------------------------------------------------------------


def add_common_flags(ap: argparse.ArgumentParser, default_port: int) -> None:
    """The flags both commands have: ``--ip --port --cert --key --idle-timeout``."""
    ap.add_argument("--ip", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    ap.add_argument("--port", type=int, default=default_port, help=f"port to listen on (default {default_port})")
    ap.add_argument("--cert", default="", help="TLS certificate PEM file (serve https/wss; with --key)")
    ap.add_argument("--key", default="", help="TLS key PEM file (with --cert)")
    idle_help = f"close proxied connections silent this long (Go duration, default {IDLE_TIMEOUT:g}s; 0: never)"
    ap.add_argument("--idle-timeout", default=f"{IDLE_TIMEOUT:g}s", help=idle_help)


def check_common_flags(ap: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Validate :func:`add_common_flags`' flags (``--idle-timeout`` becomes seconds)."""
    if bool(args.cert) != bool(args.key):
        ap.error("give both --cert and --key, or neither")
    try:
        args.idle_timeout = parse_duration(args.idle_timeout)
    except ValueError as exc:
        ap.error(f"--idle-timeout: {exc}")


def proxy_config(args: argparse.Namespace) -> Config:
    """The config of a proxy command: kite.key (required, as Go's ``config.MustGet``), ``KITE_*``, ``--ip/--port``."""
    config = Config.get(kite_key_required=True)
    config.ip, config.port = args.ip, args.port
    return config


def run_command(prog: str, args: argparse.Namespace, build: Callable[[], ProxyKite]) -> int:
    """Build the proxy, serve it until SIGTERM/SIGINT: 0 then, 1 when it cannot start."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        proxy = build()
        if args.cert:
            proxy.use_tls_file(args.cert, args.key)
    except (KiteKeyError, ConfigError, OSError, ValueError) as exc:
        print(f"Cannot read kite.key: {exc}" if isinstance(exc, KiteKeyError) else f"{prog}: {exc}", file=sys.stderr)
        return 1
    if args.cert:
        log.info("serving HTTPS with %s", args.cert)
    else:
        log.info("No cert/key files are defined. Running %s unsecure.", prog)
    gevent.signal_handler(signal.SIGTERM, proxy.close)
    gevent.signal_handler(signal.SIGINT, proxy.close)
    try:
        proxy.run(handle_signals=False)  # a proxy's tunnels and relays have no drain: it stops at once
    except OSError as exc:
        print(f"{prog}: cannot listen on {args.ip}:{args.port}: {exc}", file=sys.stderr)
        proxy.close()
        return 1
    log.info("%s stopped", prog)
    return 0
