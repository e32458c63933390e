"""The Kontrol kite: where kites register, find each other and get tokens (PROTOCOL.md §7)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from kite import Client, Config, Kite, Request
from kite.drain import StopSignals, in_main_greenlet
from kite.wire.protocol import KiteIdentity

from . import handlers
from . import metrics as kontrol_metrics
from .http import blueprint, wsgi_routes
from .keypairs import KeyPairs
from .machines import MachineRateLimit
from .registry import HEARTBEAT_INTERVAL, SELF, Registry
from .storage import (
    KeyPair,
    KeyPairDeletedError,
    KeyPairNotFoundError,
    KiteEvent,
    KontrolQuery,
    Storage,
    StorageError,
    Watcher,
    open_storage,
)
from .tokens import TOKEN_LEEWAY, TOKEN_TTL, TokenIssuer

if TYPE_CHECKING:
    from kite.metrics import KiteMetrics

    from .dashboard import Dashboard

log = logging.getLogger("kontrol")

#: The Kontrol kite's protocol version (Go ``KontrolVersion``).
KONTROL_VERSION = "0.0.4"
#: Port Kontrol listens on when none is configured (Go: 4000).
DEFAULT_PORT = 4000
#: Seconds between attempts to register itself while the storage is unavailable.
SELF_REGISTER_RETRY = 2.0

MachineAuthenticator = Callable[[str, Request], None]


def refuse_machines(auth_type: str, request: Request) -> None:
    """The default ``registerMachine`` guard: nobody may get a kite key this way.

    Open it by passing ``machine_authenticator=`` to :class:`Kontrol`, e.g. a
    function that checks a shared secret in ``auth_type`` or the caller's claimed
    username against an allow-list, and raises to refuse.
    """
    raise PermissionError("registerMachine is disabled on this Kontrol")


class Kontrol:
    """A Kontrol: a :class:`~kite.Kite` named ``kontrol`` plus storage, key pairs and tokens.

    ``config`` is the kite config (its ``username`` is the issuer of every token
    and kite key; ``kontrol_url`` goes into the kite keys it issues); ``storage``
    a :class:`~kontrol.storage.Storage` or an :func:`~kontrol.storage.open_storage`
    name (default: ``memory``).

    Once serving, Kontrol registers itself like any kite (§7.13), under its own
    user and the name ``kontrol``, at ``register_url`` (default: the
    ``kontrol_url`` of its config, else the URL it serves on), so that queries
    list it and kites can find Kontrols as they find each other. The entry is
    refreshed while Kontrol runs and removed when it closes.

    ``dashboard=True`` serves the dashboard under ``/dashboard`` (:meth:`enable_dashboard`), with
    password logins too when ``dashboard_password_file`` names a password file.
    """

    def __init__(
        self,
        config: Config | None = None,
        storage: Storage | str = "memory",
        *,
        version: str = "0.0.1",
        token_ttl: float = TOKEN_TTL,
        token_leeway: float = TOKEN_LEEWAY,
        machine_authenticator: MachineAuthenticator = refuse_machines,
        register_url: str = "",
        dashboard: bool = False,
        dashboard_password_file: str | None = None,
        **registry_options: float,
    ):
        config = config if config is not None else Config()
        config.kite_key_any_user = True  # every kite calls Kontrol with its own user's key
        self.storage = open_storage(storage) if isinstance(storage, str) else storage
        self.keypairs = KeyPairs(self.storage)
        config.verify_func = self.keypairs.trust
        self.kite = Kite("kontrol", version, config)
        self.registry = Registry(self.storage, **registry_options)
        self.tokens = TokenIssuer(self.keypairs, self.username, token_ttl, token_leeway)
        self.machine_authenticator = machine_authenticator
        #: Failed ``registerMachine`` attempts allowed per address, username and overall (password guessing).
        self.machine_rate_limit = MachineRateLimit()
        #: The URL Kontrol registers for itself ("": ``kontrol_url``); see the class docstring.
        self.register_url = register_url
        #: Register Kontrol's own entry before it accepts its first connection (:meth:`run`).
        self.register_self = True
        self._self_registration: gevent.Greenlet | None = None
        self._closing = False  # sessions closing: the kites' disconnects keep their entries
        self._shutting_down = False
        self._closed = False
        #: Whether stopping this process deletes Kontrol's own entry: always for one process; with
        #: ``kontrol --workers`` only when the supervisor stops them all (the entry is shared, and a
        #: worker stopped on its own is restarted while its siblings go on serving).
        self.deregisters_self: Callable[[], bool] = lambda: True
        self._watchers: dict[Client, dict[str, Watcher]] = {}
        self._registered: dict[Client, set[str]] = {}
        k = self.kite
        for name, fn in (
            ("register", handlers.handle_register),
            ("getKites", handlers.handle_get_kites),
            ("getToken", handlers.handle_get_token),
            ("getKey", handlers.handle_get_key),
            ("cancelWatcher", handlers.handle_cancel_watcher),
        ):
            k.handle_func(name, self._bind(fn))
        k.handle_func("registerMachine", self._bind(handlers.handle_register_machine)).disable_authentication()
        k.on_disconnect(self._on_disconnect)
        k.drain.before_close(self._end_watches)
        k.app.register_blueprint(blueprint(self))  # served by Flask for other methods (405)
        for path, app in wsgi_routes(self).items():
            k.handle_wsgi(path, app)
        kontrol_metrics.install(self)  # /readyz checks the storage; Kontrol's metrics when config.metrics
        #: The dashboard, once :meth:`enable_dashboard` was called.
        self.dashboard: Dashboard | None = None
        if dashboard:
            self.enable_dashboard(dashboard_password_file)

    def _bind(self, fn: Callable[[Kontrol, Request], Any]) -> Callable[[Request], Any]:
        return lambda r: fn(self, r)

    # -- identity and keys ----------------------------------------------------------------

    @property
    def username(self) -> str:
        """Kontrol's user: the issuer (``iss``) of its tokens and kite keys."""
        return self.kite.config.username

    @property
    def kontrol_url(self) -> str:
        """The URL written into the kite keys Kontrol issues."""
        return self.kite.config.kontrol_url or self.kite.url

    def add_key_pair(self, public: str, private: str, id: str = "") -> KeyPair:
        """Store a key pair Kontrol may sign with and trusts."""
        pair = self.keypairs.add(public, private, id)
        self.kite.config.kontrol_key = self.keypairs.current().public
        return pair

    def signing_pair(self, key_id: str) -> KeyPair:
        """The pair that signs tokens for a kite registered under ``key_id`` (§5.5)."""
        if key_id:
            try:
                return self.keypairs.by_id(key_id)
            except (KeyPairDeletedError, KeyPairNotFoundError):
                pass
        return self.keypairs.current()

    def register_user(self, username: str) -> str:
        """A new kite key for ``username``, signed by the current pair (``-initial``, §7.13)."""
        return self.keypairs.new_kite_key(username, self.username, self.kontrol_url)

    def enable_metrics(self) -> KiteMetrics:
        """Serve Prometheus metrics at ``/metrics``: the kite's and Kontrol's (:mod:`kontrol.metrics`)."""
        return kontrol_metrics.enable(self)

    def enable_dashboard(self, password_file: str | None = None) -> Dashboard:
        """Serve the dashboard (:mod:`kontrol.dashboard`) under ``/dashboard``; call before :meth:`run`.

        Holders of a kite key signed by this Kontrol log in; so do the users of ``password_file``
        (lines ``user:hash``, see :func:`kontrol.dashboard.hash_password`). It is read at once
        (``OSError``/``ValueError`` when unusable) and again at each login.
        """
        if self.dashboard is None:
            from .dashboard import Dashboard

            self.dashboard = Dashboard(self, password_file)
            self.kite.app.register_blueprint(self.dashboard.blueprint, url_prefix=self.dashboard.url_prefix)
        return self.dashboard

    # -- connections ----------------------------------------------------------------------

    def watch_connection(self, client: Client, kite: KiteIdentity, url: str, key_id: str) -> None:
        """After a websocket ``register``: drive ``kite.heartbeat`` and deregister on disconnect."""
        self._registered.setdefault(client, set()).add(kite.id)

        def ping() -> None:
            if not self.registry.seen(kite.id):
                # Live but unknown (it went quiet, or Kontrol lost it): register it again.
                try:
                    self.registry.register(kite, url, key_id, "websocket")
                except StorageError as exc:
                    log.warning("re-registering %s on ping failed: %s", kite, exc)

        interval = max(1, int(self.registry.heartbeat_interval))
        result = client.go_with_timeout("kite.heartbeat", handlers.HEARTBEAT_CALL_TIMEOUT, interval, ping)
        result.rawlink(lambda r: r.successful() or log.info("kite.heartbeat on %s failed: %s", kite, r.exception))

    def start_watch(self, r: Request, query: KontrolQuery, audience: str, callback: Callable) -> str:
        """Stream REGISTER/DEREGISTER events for ``query`` to the caller's ``watchCallback``."""
        subject = r.username

        def deliver(event: KiteEvent) -> None:
            token = ""
            if event.action == "REGISTER":
                token = self.tokens.token(audience, subject, self.signing_pair(event.key_id))
            try:
                callback({"error": None, "result": event.to_wire(token)})
            except Exception as exc:
                log.info("watch callback to %s failed: %s", r.client.kite, exc)

        watcher_id = str(uuid.uuid4())
        self._watchers.setdefault(r.client, {})[watcher_id] = self.storage.watch(query, deliver)
        return watcher_id

    def cancel_watch(self, client: Client, watcher_id: str) -> None:
        watcher = self._watchers.get(client, {}).pop(watcher_id, None)
        if watcher is not None:
            watcher.cancel()

    def _on_disconnect(self, client: Client) -> None:
        for watcher in self._watchers.pop(client, {}).values():
            watcher.cancel()
        kite_ids = self._registered.pop(client, ())
        if self._closing:
            # Kontrol is stopping, not the kite: keep its entry (it expires by TTL unless the
            # kite re-registers with the next Kontrol), so finding it never has a gap.
            return
        for kite_id in kite_ids:
            self.registry.deregister(kite_id)

    # -- serving --------------------------------------------------------------------------

    def run(self, handle_signals: bool | None = None) -> None:
        """Serve until :meth:`close` or :meth:`shutdown` (blocking) on ``config.ip:config.port``
        (0: a free port).

        Makes a key pair if the storage has none. Run from the main greenlet of the main thread, it
        drains on SIGTERM/SIGINT (:meth:`shutdown`) and stops at once on a second one, as
        :meth:`kite.Kite.run` (``handle_signals``: default ``config.handle_signals``).
        """
        if handle_signals is None:
            handle_signals = self.kite.config.handle_signals
        signals = None
        if handle_signals and in_main_greenlet():
            signals = StopSignals(self.shutdown, self.close, "kontrol").install()
        if not self.kite.config.kontrol_key:
            self.kite.config.kontrol_key = self.keypairs.current().public
        self.registry.start()
        if self.dashboard is not None:
            self.dashboard.start()
            self.kite.on_bound(self._log_dashboard_url)
        if self.register_self:
            self.kite.on_bound(self._register_self_first)
        try:
            self.kite.run(handle_signals=False)
        finally:
            if signals is not None:
                signals.uninstall()

    def _log_dashboard_url(self) -> None:
        if self.dashboard is not None:
            log.info("dashboard at %s%s/", self.kite.url.removesuffix("/kite"), self.dashboard.url_prefix)

    def _register_self_first(self) -> None:
        """Bound, not yet accepting: put Kontrol's own entry in the registry, so that whoever reaches
        Kontrol finds it listed; if the storage refuses, go on and retry in the background."""
        if not self._register_self_once():
            self._self_registration = gevent.spawn(self._register_self)

    def _register_self(self) -> None:
        """Put Kontrol's own entry in the registry, retrying while the storage refuses."""
        while not self._closing:
            gevent.sleep(SELF_REGISTER_RETRY)
            if self._register_self_once():
                return

    def _register_self_once(self) -> bool:
        url = self.register_url or self.kontrol_url
        try:
            self.registry.register(self.kite.kite(), url, self.keypairs.current().id, SELF)
        except StorageError as exc:
            log.warning("cannot register itself yet: %s", exc)
            return False
        log.info("registered itself as %s at %s", self.kite.kite(), url)
        return True

    def shutdown(self, timeout: float | None = None) -> bool:
        """Stop gracefully (blocking; SIGTERM on :meth:`run`); ``True`` if every call finished in time.

        Kontrol's own entry goes first (:attr:`deregisters_self`), so that nobody is sent here any
        more; then the kite drains (:meth:`kite.Kite.shutdown`: new calls refused, calls in flight
        finish within ``timeout``, default ``config.drain_timeout``); then the watches end and every
        session is closed with a close frame, so watchers see ``disconnect`` at once and look for
        another Kontrol. The kites registered here keep their entries (see :meth:`close`).
        Idempotent; :meth:`close` meanwhile stops at once.
        """
        if self._shutting_down:
            return self.kite.shutdown(timeout)  # waits for the drain under way
        if self._closed:
            return False
        self._shutting_down = True
        # A signal while Kontrol binds and registers itself: let that finish, then undo it.
        self.kite.drain.wait_startup(self.kite.config.drain_timeout if timeout is None else timeout)
        self._deregister_self()
        drained = self.kite.shutdown(timeout)
        self.close()
        return drained

    def _deregister_self(self) -> None:
        if self._self_registration is not None:
            self._self_registration.kill(block=False)
        if self.deregisters_self():
            self.registry.deregister(self.kite.id)  # a Kontrol that stops must not be found

    def _end_watches(self) -> None:
        """The drain is over: from now on disconnects are Kontrol's doing (entries stay), and no
        event goes to a watcher any more."""
        self._closing = True
        for watchers in self._watchers.values():
            for watcher in watchers.values():
                watcher.cancel()
        self._watchers.clear()

    def close(self) -> None:
        """Stop serving at once, stop refreshing, close the storage (registered kites stay until
        their TTL, so that finding them has no gap while they move to another Kontrol)."""
        if self._closed:
            return
        self._closed = True
        self._deregister_self()
        self._end_watches()
        self.registry.stop()
        if self.dashboard is not None:
            self.dashboard.close()
        self.kite.close()
        self.storage.close()


__all__ = ["DEFAULT_PORT", "HEARTBEAT_INTERVAL", "KONTROL_VERSION", "Kontrol", "refuse_machines"]
