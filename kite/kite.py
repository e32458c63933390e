"""``Kite``: a named service that serves methods and dials other kites.

A kite is a WSGI application: SockJS under ``/kite`` and anything else through
its Flask app (``kite.app``), so it runs standalone with :meth:`Kite.run`, inside
any WSGI stack, or under gunicorn with a gevent worker.
"""

from __future__ import annotations

import os
import socket
import ssl
import uuid
import weakref
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import gevent
from gevent.event import Event

from . import handlers as builtin_handlers
from . import jsonlog
from . import metrics as kite_metrics
from .auth import KITE_KEY, TOKEN, Verifier
from .calls import serve_call
from .client import Client
from .config import Config
from .connection import Connection
from .drain import Drain, StopSignals, in_main_greenlet
from .errors import KiteError
from .health import Health
from .kontrolclient.client import KontrolClient
from .kontrolclient.kitemethods import KontrolMethods
from .log import new_logger, setup_signal_handler
from .method import RETURN_METHOD, Handler, HandlerFunc, Method, as_handler
from .request import Request
from .wire.jws import load_public_key
from .wire.protocol import Auth, KiteIdentity, validate_name_version

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication
    from cryptography.hazmat.primitives.asymmetric import rsa
    from flask import Flask
    from gevent.pywsgi import WSGIServer

    from .connection import CallHandler
    from .transport.session import Session
    from .transport.sockjs.server import SockJSServer

#: Path prefix of the SockJS endpoint, as in Go kites.
SOCKJS_PREFIX = "/kite"

Authenticator = Callable[[Request], None]

#: A method handler function, kept as it is by the :meth:`Kite.method` decorator.
_HandlerFn = TypeVar("_HandlerFn", bound="Callable[[Request], Any]")


class Kite(KontrolMethods):
    """A kite: RPC server and client at once.

    Its Kontrol methods (``register``, ``get_kites``, ...) come from
    :class:`~kite.kontrolclient.kitemethods.KontrolMethods`.

    >>> k = Kite("math", "1.0.0")
    >>> k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)  # doctest: +ELLIPSIS
    <Method square ...>
    """

    def __init__(self, name: str, version: str, config: Config | None = None):
        """A kite named ``name`` at ``version`` (``X.Y.Z``).

        Without ``config`` it is :meth:`Config.get`: defaults, then kite.key
        (``$KITE_HOME/kite.key`` or ``~/.kite/kite.key``) when present, then the
        ``KITE_*`` variables. A present but invalid kite.key raises
        :class:`~kite.kitekey.KiteKeyError`; a bad variable ``ConfigError``.
        """
        validate_name_version(name, version)
        self.name = name
        self.version = version
        self.config = config if config is not None else Config.get(kite_key_required=False)
        self.id = str(uuid.uuid4())
        self.hostname = socket.gethostname()
        self.log = new_logger(name)
        #: How a method's result is chosen, captured by each method at registration.
        self.method_handling = RETURN_METHOD
        #: Authenticators by ``authentication.type``: ``fn(request)`` sets
        #: ``request.username`` or raises. Add your own (e.g. ``sessionID``).
        self.authenticators: dict[str, Authenticator] = {
            KITE_KEY: self.authenticate_from_kite_key,
            TOKEN: self.authenticate_from_token,
        }
        #: Trust and verification caches behind the built-in authenticators.
        self.verifier = Verifier(self)
        self._other_users_methods: set[str] = set()
        self._dialed_clients: weakref.WeakSet[Client] = weakref.WeakSet()
        #: Connections to the tunnel proxies this kite registered with: the only peers whose
        #: ``kite.tunnel`` it obeys (:mod:`kite.handlers`).
        self._tunnel_proxies: weakref.WeakSet[Client] = weakref.WeakSet()
        #: Bind with ``SO_REUSEPORT`` (:meth:`run`): several processes may then serve one port,
        #: the kernel spreading connections over them (``kontrol --workers``).
        self.reuse_port = False
        self._wsgi_routes: dict[str, WSGIApplication] = {}
        self._on_bound: list[Callable[[], Any]] = []
        self._methods: dict[str, Method] = {}
        self._pre_handlers: list[Handler] = []
        self._post_handlers: list[Handler] = []
        self._on_connect: list[Callable[[Client], Any]] = []
        self._on_disconnect: list[Callable[[Client], Any]] = []
        self._on_first_request: list[Callable[[Client], Any]] = []
        self._clients: set[Client] = set()
        self._ready = Event()
        self._closed = Event()
        self._server: WSGIServer | None = None
        self._ssl_context: ssl.SSLContext | None = None
        self._heartbeat: gevent.Greenlet[..., Any] | None = None
        #: The link to Kontrol behind :meth:`register`, :meth:`get_kites` & co. (timings are its attributes).
        self.kontrol = KontrolClient(self)
        self._app: Flask | None = None
        self._sockjs: SockJSServer | None = None
        builtin_handlers.register(self)
        #: Prometheus metrics (:mod:`kite.metrics`): :data:`~kite.metrics.DISABLED` until :meth:`enable_metrics`.
        self.metrics: kite_metrics.KiteMetrics | kite_metrics.NoMetrics = kite_metrics.DISABLED
        self._log_calls = False  # JSON logs: calls run in a log context (set_log_format)
        #: ``/healthz`` and ``/readyz`` (:mod:`kite.health`); add readiness checks with ``health.add_check``.
        self.health = Health(self)
        #: The graceful shutdown (:meth:`shutdown`, :mod:`kite.drain`): its state and figures.
        self.drain = Drain(self)
        if self.config.metrics:
            self.enable_metrics()
        if self.config.log_format != jsonlog.PLAIN:
            self.set_log_format(self.config.log_format)

    def __repr__(self) -> str:
        return f"<Kite {self.name} {self.version} {self.id}>"

    # -- identity ----------------------------------------------------------

    def kite(self) -> KiteIdentity:
        """This kite's seven-field identity."""
        c = self.config
        return KiteIdentity(
            name=self.name,
            username=c.username,
            id=self.id,
            environment=c.environment,
            region=c.region,
            version=self.version,
            hostname=self.hostname,
        )

    def identity_wire(self) -> dict[str, str]:
        """The identity as sent in every call's ``kite`` field."""
        c = self.config
        return {
            "name": self.name,
            "username": c.username,
            "id": self.id,
            "environment": c.environment,
            "region": c.region,
            "version": self.version,
            "hostname": self.hostname,
        }

    # -- methods -----------------------------------------------------------

    def handle(self, name: str, handler: Handler) -> Method:
        """Serve ``name`` with an object that has ``serve_kite(request)``."""
        method = Method(
            name, as_handler(handler), not self.config.disable_authentication, self.method_handling
        )
        self._methods[name] = method
        return method

    def handle_func(self, name: str, fn: Callable[[Request], Any]) -> Method:
        """Serve ``name`` with ``fn(request) -> result``; returns the :class:`Method` for chaining."""
        return self.handle(name, HandlerFunc(fn))

    def method(
        self, name: str | None = None, *, auth: bool | None = None, other_users: bool = False
    ) -> Callable[[_HandlerFn], _HandlerFn]:
        """Decorator form of :meth:`handle_func`: ``@k.method("square", auth=False)``.

        ``other_users=True`` opens the method to kite keys of other users (:meth:`allow_other_users`).
        """

        def register(fn: _HandlerFn) -> _HandlerFn:
            m = self.handle_func(name or fn.__name__, fn)
            if auth is not None:
                m.auth_required = auth
            if other_users:
                self.allow_other_users(m.name)
            return fn

        return register

    def pre_handle(self, handler: Handler) -> None:
        """Run ``handler`` before every method's handler (after the method's own pre-handlers)."""
        self._pre_handlers.append(as_handler(handler))

    def pre_handle_func(self, fn: Callable[[Request], Any]) -> None:
        self.pre_handle(HandlerFunc(fn))

    def post_handle(self, handler: Handler) -> None:
        """Run ``handler`` after every method's handler (after the method's own post-handlers)."""
        self._post_handlers.append(as_handler(handler))

    def post_handle_func(self, fn: Callable[[Request], Any]) -> None:
        self.post_handle(HandlerFunc(fn))

    def on_connect(self, fn: Callable[[Client], Any]) -> Callable[[Client], Any]:
        """Run ``fn(client)`` for every new incoming session."""
        self._on_connect.append(fn)
        return fn

    def on_disconnect(self, fn: Callable[[Client], Any]) -> Callable[[Client], Any]:
        """Run ``fn(client)`` when an incoming session ends."""
        self._on_disconnect.append(fn)
        return fn

    def on_first_request(self, fn: Callable[[Client], Any]) -> Callable[[Client], Any]:
        """Run ``fn(client)`` at the first call of an incoming session (the peer's identity is known)."""
        self._on_first_request.append(fn)
        return fn

    # -- clients -----------------------------------------------------------

    def new_client(self, url: str, transport: str | None = None) -> Client:
        """A client for the kite at ``url`` (``http(s)://host:port/kite`` or ``ws(s)://…/kite/websocket``)."""
        client = Client(self, url, transport=transport)
        self._dialed_clients.add(client)  # so update_auth() can refresh its kite key
        return client

    # -- authentication ----------------------------------------------------

    def authenticate_from_kite_key(self, request: Request) -> None:
        """The ``kiteKey`` authenticator (§5.4): a kite key signed by a trusted Kontrol key.

        Strict by default: the key must belong to this kite's user unless the
        method is opened with :meth:`allow_other_users` or
        ``config.kite_key_any_user`` is set.
        """
        self.verifier.authenticate_from_kite_key(request)

    def authenticate_from_token(self, request: Request) -> None:
        """The ``token`` authenticator (§5.5): a Kontrol token for this kite."""
        self.verifier.authenticate_from_token(request)

    def authenticate_simple_kite_key(self, key: str) -> str:
        """Verify a kite key without a request; returns its username (no same-user rule).

        Raises :class:`~kite.errors.AuthenticationError`.
        """
        return self.verifier.verify_kite_key(key)

    def allow_other_users(self, *method_names: str) -> None:
        """Let kite keys of other users call these methods (the strict default refuses them)."""
        self._other_users_methods.update(method_names)

    def kite_key(self) -> str:
        """The kite key this kite authenticates with (``config.kite_key``)."""
        return self.config.kite_key

    def kontrol_key(self) -> rsa.RSAPublicKey | None:
        """The trusted Kontrol public key (a ``cryptography`` RSA key object), or ``None``.

        Parsed once per PEM and cached.
        """
        return self.verifier.kontrol_key()

    def rsa_key(self, token: str) -> rsa.RSAPublicKey:
        """The key ``token`` must be signed with (Go's ``RSAKey``): the Kontrol key, after
        checking that the token is RS256 and issued by this kite's Kontrol user."""
        return self.verifier.rsa_key(token)

    def update_auth(self, kite_key: str = "", public_key: str = "") -> None:
        """Adopt a re-signed kite key and/or a new Kontrol public key (§5.7, checklist 34).

        Kontrol returns them from ``register`` after a key rotation. The new kite
        key (self-verified) replaces ``config.kite_key`` and every dialed client
        that authenticated with the old one; its ``kontrolKey`` (or ``public_key``)
        becomes the trusted Kontrol key. Nothing is written to disk.
        """
        from .kitekey import parse

        old_key = self.config.kite_key
        if kite_key:
            parsed = parse(kite_key)
            public_key = parsed.kontrol_key or public_key
            if public_key:
                load_public_key(public_key)
            self.config.kite_key = parsed.raw
            for client in list(self._dialed_clients):
                if client.auth is not None and client.auth.type == KITE_KEY and client.auth.key == old_key:
                    client.auth = Auth(KITE_KEY, parsed.raw)
        if public_key:
            load_public_key(public_key)  # a bad key fails here (ValueError), before it is adopted
            self.config.kontrol_key = public_key

    # -- serving calls -----------------------------------------------------

    def _handle_call_for(self, client: Client) -> CallHandler:
        if self.metrics.enabled or self._log_calls:
            return kite_metrics.observed_call_handler(self, client)

        def handle(conn: Connection, method_name: str, arguments: list[Any]) -> None:
            self._handle_call(client, method_name, arguments)

        return handle

    def _handle_call(self, client: Client, method_name: str, arguments: list[Any]) -> KiteError | None:
        return serve_call(self, client, method_name, arguments)

    # -- WSGI and serving --------------------------------------------------

    @property
    def app(self) -> Flask:
        """The kite's Flask app, serving everything outside ``/kite`` (made on first use, so that
        a kite that only dials others never imports Flask)."""
        if self._app is None:
            from flask import Flask

            self._app = Flask(f"kite.{self.name}")
        return self._app

    @property
    def sockjs(self) -> SockJSServer:
        """The SockJS WSGI app serving ``/kite``."""
        if self._sockjs is None:
            from .transport.sockjs.server import SockJSServer

            c = self.config
            self._sockjs = SockJSServer(
                prefix=SOCKJS_PREFIX,
                on_session=self._serve_session,
                heartbeat_interval=c.heartbeat_interval,
                disconnect_delay=c.disconnect_delay,
                max_message_size=c.max_message_size,
                dead_peer_timeout=c.dead_peer_timeout,
                max_send_backlog=c.max_send_backlog,
            )
        return self._sockjs

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """WSGI entry point: SockJS under ``/kite``, :meth:`handle_wsgi` routes, the Flask app elsewhere."""
        path = environ.get("PATH_INFO", "")
        if path == SOCKJS_PREFIX or path.startswith(SOCKJS_PREFIX + "/"):
            return self.sockjs(environ, start_response)
        route = self._wsgi_routes.get(path)
        if route is not None:
            return route(environ, start_response)
        return self.app(environ, start_response)

    def on_bound(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """Run ``fn()`` in :meth:`run` once the port is bound (``port`` is known), before the first
        connection is accepted: what must be true when the kite answers (Kontrol's own entry)."""
        self._on_bound.append(fn)
        return fn

    def handle_wsgi(self, path: str, app: WSGIApplication) -> None:
        """Serve the WSGI application ``app`` at exactly ``path``, ahead of the Flask app: for
        endpoints hit so often that Flask's routing and request objects (~100 µs) matter."""
        self._wsgi_routes[path] = app

    def _serve_session(self, session: Session) -> None:
        client = Client(self)
        self._clients.add(client)
        try:
            for fn in self._on_connect:
                client._run_handler(fn)
            client.serve(session)
        finally:
            self._clients.discard(client)
            for fn in self._on_disconnect:
                client._run_handler(fn)

    def handle_http(self, pattern: str, view: Callable[..., Any], methods: list[str] | None = None) -> None:
        """Serve ``view`` (a Flask view function) at ``pattern`` next to ``/kite``."""
        self.app.add_url_rule(pattern, endpoint=f"{pattern}:{id(view)}", view_func=view, methods=methods)

    handle_http_func = handle_http

    def use_tls(self, cert_pem: str, key_pem: str) -> None:
        """Serve HTTPS/WSS with a certificate and key given as PEM text."""
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            cert_file, key_file = os.path.join(tmp, "cert.pem"), os.path.join(tmp, "key.pem")
            with open(cert_file, "w") as f:
                f.write(cert_pem)
            with open(key_file, "w") as f:
                f.write(key_pem)
            self.use_tls_file(cert_file, key_file)

    def use_tls_file(self, cert_file: str, key_file: str) -> None:
        """Serve HTTPS/WSS with a certificate and key from files."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert_file, key_file)
        context.set_alpn_protocols(["http/1.1"])
        self._ssl_context = context

    def run(self, handle_signals: bool | None = None) -> None:
        """Serve until :meth:`close` or :meth:`shutdown` (blocking). ``KITE_VERSION`` set: print the
        version and return.

        Run from the main greenlet of the main thread (a program that serves this kite), it drains
        on SIGTERM or SIGINT (:meth:`shutdown` with ``config.drain_timeout``) and stops at once on a
        second one. ``handle_signals`` (default ``config.handle_signals``) ``False`` leaves the
        signals alone; a ``run()`` in a greenlet of its own never handles them.
        """
        if os.environ.get("KITE_VERSION"):
            print(self.version)
            return
        if handle_signals is None:
            handle_signals = self.config.handle_signals
        signals = None
        if handle_signals and in_main_greenlet():
            signals = StopSignals(self.shutdown, self.close, self.name).install()
        try:
            if not self._start_serving():
                return
            try:
                self._closed.wait()
                if self.drain.started is not None:
                    self.drain.done.wait()  # a shutdown() closed it: let it log its end before run() returns
            finally:
                self._closed.set()
        finally:
            if signals is not None:
                signals.uninstall()

    def _start_serving(self) -> bool:
        """Bind, run the on_bound hooks, accept; ``False`` if the kite was closed meanwhile."""
        self.drain.startup_begins()  # a shutdown() meanwhile waits until the kite serves
        try:
            self._server = self._make_server()
            self._server.init_socket()  # bound and listening: connections queue until it accepts
            for fn in self._on_bound:
                fn()
            if self._closed.is_set():  # closed while starting: do not serve
                self._server.close()
                return False
            self._server.start()
            self.log.info("serving %s %s on %s", self.name, self.version, self.url)
            self._ready.set()
            return True
        finally:
            self.drain.startup_ends()

    def _make_server(self) -> WSGIServer:
        """The WSGI server :meth:`run` starts (not started yet): this kite on ``config.ip:config.port``,
        with TLS when set. Subclasses may return one with other options (a handler class, say)."""
        from .transport.wsgi import make_server

        return make_server(self, self.config.ip, self.config.port, ssl_context=self._ssl_context,
                           reuse_port=self.reuse_port, header_timeout=self.config.header_timeout,
                           body_timeout=self.config.body_timeout)

    def server_ready_notify(self) -> Event:
        """An event set once :meth:`run` listens (``port`` is then the bound port)."""
        return self._ready

    def server_close_notify(self) -> Event:
        """An event set once the kite is closed."""
        return self._closed

    @property
    def port(self) -> int:
        """The bound port while serving, else the configured one."""
        server = self._server
        if server is not None:
            port = server.server_port
            assert port is not None  # make_server binds a (host, port) address, never a unix socket
            return port
        return self.config.port

    @property
    def addr(self) -> str:
        """``host:port`` the kite listens on."""
        host = self.config.ip
        return f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """The SockJS base URL of this kite (``http(s)://addr/kite``)."""
        scheme = "https" if self._ssl_context else "http"
        return f"{scheme}://{self.addr}{SOCKJS_PREFIX}"

    def close_sessions(self) -> None:
        """Close every incoming session (the peers see ``c[3000,"Go away!"]``)."""
        for client in list(self._clients):
            client.close()
        if self._sockjs is not None:
            self._sockjs.close()

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop gracefully (blocking); ``True`` if every call in flight finished within ``timeout``
        seconds (default ``config.drain_timeout``, :data:`~kite.config.DEFAULT_DRAIN_TIMEOUT`).

        In this order (:mod:`kite.drain`): deregister from Kontrol (a websocket registration ends
        with the Kontrol connection, which Kontrol answers by deleting the entry; an HTTP
        registration only stops heartbeating -- the protocol has no unregister -- so Kontrol drops
        it when the heartbeats are missed, 30 s with Go's timings); stop accepting connections and
        answer new calls with a ``genericError`` "kite is shutting down"; wait until no call is
        running or queued on any connection (or the timeout); close every session with a close
        frame (callers see ``disconnect``) and stop the server, as :meth:`close`.

        Idempotent (a second call waits for the first); :meth:`close` meanwhile stops at once. From
        a signal handler, run it in a greenlet: ``gevent.spawn(k.shutdown)``.
        """
        return self.drain.shutdown(self.config.drain_timeout if timeout is None else timeout)

    def close(self) -> None:
        """Stop serving at once: close every incoming session and the Kontrol connection (no drain:
        calls still running are cut off; :meth:`shutdown` lets them finish)."""
        self.kontrol.close()
        self.close_sessions()
        if self._server is not None:
            self._server.stop(timeout=1)
        if self._heartbeat is not None:
            self._heartbeat.kill(block=False)
        self._closed.set()

    def enable_metrics(self) -> kite_metrics.KiteMetrics:
        """Collect Prometheus metrics and serve them at ``/metrics`` (:mod:`kite.metrics`; idempotent).

        Call it before serving. Needs ``pip install kite[metrics]``, else raises
        :class:`~kite.metrics.MetricsNotInstalledError` saying so.
        """
        return kite_metrics.enable(self)

    def set_log_format(self, log_format: str) -> None:
        """``"json"``: log JSON lines with this kite's id and the call's method, caller, call id and
        duration (:mod:`kite.jsonlog`); ``"plain"``: the default format."""
        jsonlog.set_log_format(log_format)
        self._log_calls = log_format == jsonlog.JSON
        if self._log_calls:
            jsonlog.stamp_kite_id(self.log, self.id)

    def set_log_level(self, level: int | str) -> None:
        """Set this kite's log level (``"DEBUG"``, ``logging.INFO``, ...)."""
        self.log.setLevel(level.upper() if isinstance(level, str) else level)

    def setup_signal_handler(self) -> None:
        """Toggle DEBUG logging on SIGUSR2, like Go kites."""
        setup_signal_handler(self.log)

