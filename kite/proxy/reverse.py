"""The reverse proxy kite (PROTOCOL.md §8.4): public URLs for kites that cannot be reached directly.

::

    python -m kite.proxy.reverse --region eu [--port 3999] [--public-host proxy.example.com]
                                 [--public-port 443] [--cert cert.pem --key key.pem]

Who dials whom::

    backend kite ──(1) dials, register(["http://10.0.4.17:6000/kite"])──▶ proxy (:3999/kite)
                 ◀── "https://proxy.example.com:443/proxy/<kite id>" ──
    backend kite ──(2) register(<that URL>)──▶ Kontrol
    caller ──(3) getKites──▶ Kontrol ──▶ [<that URL>, token]
    caller ──(4) dials https://proxy.example.com:443/proxy/<kite id>/…──▶ proxy
    proxy ──(5) dials ws://10.0.4.17:6000/kite/… (or http:// for XHR)──▶ backend kite

:class:`ReverseProxy` is a kite named ``proxy`` (0.0.1): ``/kite`` is its own SockJS
endpoint, where its one method ``register`` lives; ``/proxy/<kite id>/<rest>`` is
forwarded (:mod:`kite.proxy.forward`). An entry lasts as long as the backend's connection
to the proxy, and a backend that stops answering ``kite.ping`` on it is forgotten (its
relays closed with 1014). Kite ids are bound to the user who registered them
(:mod:`kite.proxy.registry`). The proxy registers itself with Kontrol as
``<scheme>://<public host>:<public port>/kite``, only once it listens.

The public URLs use ``http``/``https`` (a SockJS base URL, what kites and kite.js dial),
where Go's binary wrote ``ws``/``wss``, which the 2016 Go client cannot dial (§1.4).
"""

from __future__ import annotations

if __name__ == "__main__":  # a server entry point: patch before anything loads requests
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import logging  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterable  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402

import gevent  # noqa: E402
from gevent.pool import Group  # noqa: E402

from kite.client import Client  # noqa: E402
from kite.config import Config, ConfigError, parse_duration  # noqa: E402
from kite.kite import Kite  # noqa: E402
from kite.kitekey import KiteKeyError  # noqa: E402
from kite.request import Request  # noqa: E402
from kite.transport.wsgi import make_server  # noqa: E402

from .forward import PROXY_PREFIX, Forwarder, ForwardingHandler  # noqa: E402
from .httpforward import HttpForwarder  # noqa: E402
from .registry import Backend, Registry  # noqa: E402
from .relay import CLOSE_BAD_GATEWAY, IDLE_TIMEOUT, Relays  # noqa: E402

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse
    from gevent.pywsgi import WSGIServer

NAME = "proxy"
VERSION = "0.0.1"
#: The Go binary's defaults.
DEFAULT_PORT = 3999
DEFAULT_PUBLIC_HOST = "127.0.0.1"
DEFAULT_ENVIRONMENT = "development"
#: Seconds between two ``kite.ping`` rounds over the backends' connections: a backend
#: whose host vanished (no FIN, no RST) is found out within a minute, at one tiny call
#: per backend and half-minute.
LIVENESS_INTERVAL = 30.0
#: Seconds a backend has to answer that ``kite.ping``.
PING_TIMEOUT = 10.0

log = logging.getLogger("kite.proxy")


class ReverseProxy(Kite):
    """The reverse proxy kite; see the module docstring.

    ``public_host``/``public_port`` make the URLs handed out (``public_port`` ``None``:
    the port it listens on). ``idle_timeout``: seconds a proxied WebSocket may carry
    nothing before it is closed. Serve it with :meth:`run`; ``register_self`` (default
    ``True``) registers it with ``config.kontrol_url`` once it listens.
    """

    def __init__(self, config: Config | None = None, *, public_host: str = DEFAULT_PUBLIC_HOST,
                 public_port: int | None = None, idle_timeout: float = IDLE_TIMEOUT):
        super().__init__(NAME, VERSION, config)
        self.public_host = public_host
        self.public_port = public_port
        #: Register with Kontrol once listening (:meth:`run`).
        self.register_self = True
        #: Seconds between ``kite.ping`` rounds over the backends' connections, and their timeout.
        self.liveness_interval = LIVENESS_INTERVAL
        self.ping_timeout = PING_TIMEOUT
        self.registry = Registry()
        self.relays = Relays(idle_timeout)
        self.http = HttpForwarder()
        self.forwarder = Forwarder(self.registry, self.relays, self.http,
                                   max_message_size=self.config.max_message_size)
        method = self.handle_func("register", self._register)
        method.auth_required = True  # the id is bound to the authenticated user, so there must be one
        self.allow_other_users("register")  # kites of every user of this Kontrol may register
        self.on_disconnect(self._peer_gone)
        self._greenlets = Group()
        self._liveness: gevent.Greenlet[[], None] | None = None

    # -- URLs ----------------------------------------------------------------------------

    @property
    def public_base(self) -> str:
        """``<scheme>://<public host>:<public port>``."""
        scheme = "https" if self._ssl_context is not None else "http"
        host = f"[{self.public_host}]" if ":" in self.public_host else self.public_host
        return f"{scheme}://{host}:{self.public_port or self.port}"

    def public_url(self, kite_id: str) -> str:
        """The URL handed out to the kite ``kite_id``: ``<public base>/proxy/<kite id>``."""
        return f"{self.public_base}{PROXY_PREFIX}/{kite_id}"

    @property
    def self_url(self) -> str:
        """The URL the proxy registers with Kontrol: ``<public base>/kite``."""
        return f"{self.public_base}/kite"

    # -- register ------------------------------------------------------------------------

    def _register(self, r: Request) -> str:
        """``register`` ``withArgs [kiteURL]``: remember the caller's URL, return its public URL."""
        url = r.args.one().must_string()
        kite_id = r.client.kite.id
        backend, replaced = self.registry.add(kite_id, r.username, url, r.client)
        if replaced is not None and replaced.client is not r.client:
            log.info("kite %s of %s registered again from %s; the entry from %s is replaced",
                     kite_id, r.username, r.client.remote_addr, replaced.client.remote_addr)
        public = self.public_url(kite_id)
        log.info("kite %s of %s (%s) registered %s; public URL %s",
                 kite_id, r.username, r.client.remote_addr, backend.url, public)
        self._start_liveness()
        return public

    def _peer_gone(self, client: Client) -> None:
        for backend in self.registry.remove_client(client):
            log.info("kite %s of %s removed: its connection to the proxy closed", backend.kite_id, backend.username)

    def forget(self, backend: Backend, why: str) -> None:
        """Drop ``backend``: its entry, its relays (closed with 1014) and its connection."""
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

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """WSGI: ``/proxy/…`` is forwarded, the rest is the kite's own (``/kite``)."""
        if environ.get("PATH_INFO", "").startswith(PROXY_PREFIX + "/"):
            return self.forwarder(environ, start_response)
        return super().__call__(environ, start_response)

    def _make_server(self) -> WSGIServer:
        return make_server(self, self.config.ip, self.config.port, ssl_context=self._ssl_context,
                           handler_class=ForwardingHandler)

    def run(self) -> None:
        """Listen, then register with Kontrol (``register_self``), and serve until :meth:`close`.

        A failed bind raises before anything is registered.
        """
        registrar = self._greenlets.spawn(self._register_when_listening)
        try:
            super().run()
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
        """Close the relays, stop serving and registering, and close the backend connections."""
        self.relays.close()
        self._greenlets.kill(block=False)
        super().close()
        self.http.close()


# -- the command ------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m kite.proxy.reverse", description=__doc__.split("\n\n")[0])
    ap.add_argument("--ip", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    ap.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default {DEFAULT_PORT})")
    ap.add_argument("--public-host", default=DEFAULT_PUBLIC_HOST,
                    help=f"host in the URLs handed out; must match the certificate (default {DEFAULT_PUBLIC_HOST})")
    ap.add_argument("--public-port", type=int, default=None, help="port in the URLs handed out (default: --port)")
    ap.add_argument("--region", required=True, help="the proxy kite's region")
    ap.add_argument("--env", default=DEFAULT_ENVIRONMENT, help=f"the proxy kite's environment ({DEFAULT_ENVIRONMENT})")
    ap.add_argument("--cert", default="", help="TLS certificate PEM file (serve https/wss; with --key)")
    ap.add_argument("--key", default="", help="TLS key PEM file (with --cert)")
    idle_help = f"close proxied WebSockets silent this long (Go duration, default {IDLE_TIMEOUT:g}s; 0: never)"
    ap.add_argument("--idle-timeout", default=f"{IDLE_TIMEOUT:g}s", help=idle_help)
    ap.add_argument("--version", action="version", version=VERSION, help="print the version and exit")
    args = ap.parse_args(argv)
    if bool(args.cert) != bool(args.key):
        ap.error("give both --cert and --key, or neither")
    try:
        args.idle_timeout = parse_duration(args.idle_timeout)
    except ValueError as exc:
        ap.error(f"--idle-timeout: {exc}")
    return args


def build(args: argparse.Namespace) -> ReverseProxy:
    """The proxy of the options, its config from kite.key (required, as Go's ``config.MustGet``) and ``KITE_*``."""
    config = Config.get(kite_key_required=True)
    config.ip, config.port = args.ip, args.port
    config.region, config.environment = args.region, args.env
    proxy = ReverseProxy(config, public_host=args.public_host, public_port=args.public_port or args.port,
                         idle_timeout=args.idle_timeout)
    if args.cert:
        proxy.use_tls_file(args.cert, args.key)
    return proxy


def main(argv: list[str] | None = None) -> int:
    """``python -m kite.proxy.reverse``: 0 after SIGTERM/SIGINT, 1 when it cannot start."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        proxy = build(args)
    except (KiteKeyError, ConfigError, OSError) as exc:
        print(f"Cannot read kite.key: {exc}" if isinstance(exc, KiteKeyError) else f"proxy: {exc}", file=sys.stderr)
        return 1
    if args.cert:
        log.info("serving HTTPS with %s", args.cert)
    else:
        log.info("No cert/key files are defined. Running proxy unsecure.")
    gevent.signal_handler(signal.SIGTERM, proxy.close)
    gevent.signal_handler(signal.SIGINT, proxy.close)
    try:
        proxy.run()
    except OSError as exc:
        print(f"proxy: cannot listen on {args.ip}:{args.port}: {exc}", file=sys.stderr)
        proxy.close()
        return 1
    log.info("proxy stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
