"""The kite side of Kontrol, the kite registry (PROTOCOL.md §7, §8.2).

Every kite has one :class:`KontrolClient` (``kite.kontrol``) behind the Kontrol
methods of :class:`~kite.Kite`:

* one shared connection to ``config.kontrol_url``, created on first use,
  authenticated with the kite key and redialed forever (:meth:`KontrolClient.setup`);
* registration over that connection (``register``, ``register_forever``) or over
  HTTP with heartbeats (``register_http``, ``register_http_forever``,
  :mod:`kite.kontrolclient.heartbeat`);
* lookups: ``get_kites`` (undialed clients with Kontrol tokens that renew
  themselves), ``dial_kite``, ``watch_kites``, ``get_token``, ``get_key``.

Kontrol's answers may rotate keys: a ``register`` result carrying ``kiteKey``
and/or ``publicKey`` is applied with :meth:`~kite.Kite.update_auth` (§5.7), and
``getKey`` replaces the trusted Kontrol key.

Timings are attributes of the :class:`KontrolClient` so tests can shorten them;
the defaults are the Go kite's.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent
from gevent.event import AsyncResult, Event
from gevent.pool import Group

from kite.auth import KITE_KEY, TOKEN
from kite.client import BACKOFF_JITTER, Client, backoff_delays
from kite.errors import InvalidResponseError, TimeoutError
from kite.wire.protocol import Auth, KiteIdentity, KontrolQuery, RegisterResult, parse_get_kites_result

from . import heartbeat
from .errors import KontrolError, NoKitesAvailableError, NoKontrolURLError, RegisterError
from .keyrenewer import KeyRenewer
from .proxyclient import PROXY_RETRY_INTERVAL
from .tokenrenewer import RENEW_BEFORE, RETRY_INTERVAL, TokenRenewer
from .watch import Watcher

if TYPE_CHECKING:
    from kite.kite import Kite

log = logging.getLogger("kite.kontrolclient")

#: Seconds between attempts of :meth:`KontrolClient.register_forever` after a
#: failure (Go's ``kontrolRetryDuration``).
REGISTER_RETRY_INTERVAL = 10.0
#: Back-off of :meth:`KontrolClient.register_http_forever` (Go's heartbeat.go):
#: first wait, growth per failure, cap, and the +-jitter fraction. Long waits,
#: because many kites re-registering at once after a Kontrol restart would
#: otherwise stampede it.
HTTP_REGISTER_INITIAL = 30.0
HTTP_REGISTER_MULTIPLIER = 1.7
HTTP_REGISTER_MAX = 300.0
HTTP_REGISTER_JITTER = BACKOFF_JITTER
#: The name shown for the Kontrol connection in logs (Go sets the same).
KONTROL_NAME = "kontrol"


class KontrolClient:
    """A kite's link to Kontrol: the shared connection, registration state and timings.

    Reach it as ``kite.kontrol``; the :class:`~kite.Kite` methods (``register``,
    ``get_kites``, ...) delegate here.
    """

    def __init__(self, kite: Kite):
        self.kite = kite
        #: The connection to Kontrol (created by :meth:`setup`), or ``None``.
        self.client: Client | None = None
        #: Seconds between ``register_forever`` attempts after a failure.
        self.retry_interval = REGISTER_RETRY_INTERVAL
        #: Seconds between ``register_to_proxy`` attempts after a failure.
        self.proxy_retry_interval = PROXY_RETRY_INTERVAL
        #: ``register_http_forever`` back-off: first wait, multiplier, cap (seconds).
        self.http_register_initial = HTTP_REGISTER_INITIAL
        self.http_register_multiplier = HTTP_REGISTER_MULTIPLIER
        self.http_register_max = HTTP_REGISTER_MAX
        #: The token renewers of ``get_kites`` clients: renew this long before ``exp``, and retry a
        #: failed renewal after this long (seconds; :mod:`kite.kontrolclient.tokenrenewer`).
        self.token_renew_before = RENEW_BEFORE
        self.token_retry_interval = RETRY_INTERVAL
        #: The URL ``register_forever`` keeps registered, and the last one Kontrol accepted.
        self.register_url: str | None = None
        self.last_registered_url: str | None = None
        #: The HTTP heartbeat of the last ``register_http``, if any.
        self.http_heartbeat: heartbeat.HTTPHeartbeat | None = None
        self._connected = Event()
        #: Connections made so far, and the one the last registration succeeded on:
        #: ``register_forever`` registers once per connection, not once per wake-up.
        self._connection_no = 0
        self._registered_on = -1
        self._registered = Event()
        self._on_register: list[Callable[[RegisterResult], Any]] = []
        self._registrar: gevent.Greenlet[..., Any] | None = None
        self._register_wanted = Event()
        self._register_waiters: list[tuple[str | None, AsyncResult[None]]] = []
        self._retry: gevent.Greenlet[..., Any] | None = None
        self._watchers: list[Watcher] = []
        self._greenlets = Group()
        self._closed = False

    def __repr__(self) -> str:
        return f"<KontrolClient {self.kite.config.kontrol_url or '(no URL)'} connected={self.connected}>"

    @property
    def connected(self) -> bool:
        """True while the Kontrol connection is up."""
        return self.client is not None and self.client.connected

    # -- connection ----------------------------------------------------------

    def setup(self) -> Client:
        """The Kontrol connection, created and dialed forever on first use.

        Raises :class:`NoKontrolURLError` when ``config.kontrol_url`` is empty.
        """
        if self.client is not None:
            return self.client
        if self._closed:
            raise KontrolError("the kite is closed")
        url = self.kite.config.kontrol_url
        if not url:
            raise NoKontrolURLError()
        client = self.kite.new_client(url)
        client.kite = KiteIdentity(name=KONTROL_NAME)
        client.auth = Auth(KITE_KEY, self.kite.kite_key())
        client.on_connect(self._on_connect)
        client.on_disconnect(self._on_disconnect)
        self.client = client
        client.dial_forever()
        return client

    def _on_connect(self, client: Client) -> None:
        self.kite.log.info("Connected to Kontrol")
        self._connection_no += 1
        self._connected.set()
        if self.register_url is not None:
            self._register_wanted.set()  # re-register on every (re)connect
        for watcher in list(self._watchers):
            self._spawn(watcher._rewatch)

    def _on_disconnect(self, client: Client) -> None:
        self._connected.clear()
        if not self._closed:
            self.kite.log.warning("Disconnected from Kontrol.")

    def _wait_connected(self, method: str) -> Client:
        client = self.setup()
        if client.connected:
            return client
        timeout = self.kite.config.timeout
        if not self._connected.wait(timeout):
            # Go's text, which says "registering" whatever the method.
            raise TimeoutError(f"Timed out registering to kontrol for {method} method after {timeout:g}s")
        return client

    def tell(self, method: str, timeout: float | None, *args: Any) -> Any:
        """Call ``method`` on Kontrol (Go's ``TellKontrolWithTimeout``).

        Waits up to ``config.timeout`` for the Kontrol connection (else
        :class:`~kite.errors.TimeoutError`), then waits ``timeout`` seconds for the reply.
        """
        return self._wait_connected(method).tell_with_timeout(method, timeout, *args)

    # -- registration over the Kontrol connection ------------------------------

    def on_register(self, fn: Callable[[RegisterResult], Any]) -> Callable[[RegisterResult], Any]:
        """Run ``fn(result)`` after every successful registration (usable as a decorator)."""
        self._on_register.append(fn)
        return fn

    def ready_notify(self) -> Event:
        """An event set after the first successful registration."""
        return self._registered

    def register(self, url: str) -> RegisterResult:
        """One ``register`` call with ``[{"url": url}]``; see :meth:`kite.Kite.register`."""
        url = str(url)
        self.kite.log.info("Registering to kontrol with URL: %s", url)
        raw = self.tell("register", self.kite.config.timeout, {"url": url})
        try:
            result = RegisterResult.from_wire(raw)
        except ValueError as exc:
            raise InvalidResponseError(f"register: {exc}") from None
        if result.err:
            raise RegisterError(result.err)
        self.kite.log.info("Registered to kontrol with URL: %s and Kite query: %s", result.url, self.kite.kite())
        self._registered_on = self._connection_no
        self._registration_done(result)
        return result

    def _registration_done(self, result: RegisterResult) -> None:
        if result.kite_key or result.public_key:
            try:
                self.kite.update_auth(result.kite_key, result.public_key)
            except Exception as exc:
                self.kite.log.error("cannot adopt the keys Kontrol returned: %s", exc)
        for fn in list(self._on_register):
            try:
                fn(result)
            except Exception:
                log.exception("on_register handler %r failed", fn)
        self._registered.set()

    def register_forever(self, url: str) -> None:
        """Keep ``url`` registered; see :meth:`kite.Kite.register_forever`."""
        self.setup()
        if self._registrar is None or self._registrar.dead:
            self._registrar = self._spawn(self._register_loop)
        url = str(url)
        outcome: AsyncResult[None] = AsyncResult()
        self._register_waiters.append((url, outcome))
        self.register_url = url
        self._register_wanted.set()
        outcome.get()

    def _register_loop(self) -> None:
        while True:
            self._register_wanted.wait()
            self._register_wanted.clear()
            url = self.register_url
            if url is None:
                continue
            if url == self.last_registered_url and self._registered_on == self._connection_no and self.connected:
                self._resolve_register_waiters(url, None)
                continue  # already registered on this connection
            try:
                self.register(url)
            except Exception as exc:
                self._resolve_register_waiters(url, exc)
                self.kite.log.error(
                    "Cannot register to Kontrol: %s Will retry after %g seconds", exc, self.retry_interval
                )
                if self._retry is None or self._retry.dead:
                    self._retry = self._spawn_later(self.retry_interval, self._register_wanted.set)
            else:
                self.last_registered_url = url
                if self._retry is not None:
                    self._retry.kill(block=False)
                self._resolve_register_waiters(url, None)

    def _resolve_register_waiters(self, url: str | None, exc: BaseException | None) -> None:
        """Settle the ``register_forever`` calls waiting for ``url`` (``None``: all of them)."""
        settled = [w for w in self._register_waiters if url is None or w[0] == url]
        self._register_waiters = [w for w in self._register_waiters if w not in settled]
        for _url, waiter in settled:
            if exc is None:
                waiter.set(None)
            else:
                waiter.set_exception(exc)

    # -- registration over HTTP --------------------------------------------------

    def register_http(self, url: str) -> RegisterResult:
        """``POST /register`` and start the heartbeats; see :meth:`kite.Kite.register_http`."""
        kontrol_url = self.kite.config.kontrol_url
        if not kontrol_url:
            raise NoKontrolURLError()
        url = str(url)
        endpoint = heartbeat.kontrol_path(kontrol_url, heartbeat.REGISTER_PATH)
        body = {
            "url": url,
            "kite": self.kite.identity_wire(),
            "auth": {"type": KITE_KEY, "key": self.kite.kite_key()},
        }
        timeout = self.kite.config.timeout
        try:
            status, text = heartbeat.post_register(endpoint, body, timeout)
        except Exception as exc:
            raise RegisterError(f"cannot register to {endpoint}: {exc}") from exc
        try:
            result = RegisterResult.from_wire(json.loads(text))
        except (ValueError, RecursionError):  # RecursionError: JSON nested deeper than the parser goes
            raise RegisterError(f"invalid register response from {endpoint} (HTTP {status}): {text[:200]!r}") from None
        if result.err:
            raise RegisterError(result.err)
        if status != 200:
            raise RegisterError(f"register to {endpoint} failed with HTTP {status}")
        if result.heartbeat_interval <= 0:
            raise RegisterError("heartbeat interval cannot be zero")
        self.kite.log.info(
            "Registered (via HTTP) with URL: '%s' and HeartBeat interval: '%ss'", result.url, result.heartbeat_interval
        )
        if self.http_heartbeat is not None:
            self.http_heartbeat.stop()
        self.http_heartbeat = heartbeat.HTTPHeartbeat(
            self.kite,
            heartbeat.kontrol_path(kontrol_url, heartbeat.HEARTBEAT_PATH),
            result.heartbeat_interval,
            on_register_again=lambda: self._spawn(self.register_http_forever, url),
            timeout=timeout,
        )
        self.http_heartbeat.start()
        self._registration_done(result)
        return result

    def register_http_forever(
        self,
        url: str,
        *,
        initial: float | None = None,
        multiplier: float | None = None,
        max_interval: float | None = None,
    ) -> RegisterResult:
        """``register_http`` until it works, with back-off; see :meth:`kite.Kite.register_http_forever`."""
        delays = backoff_delays(
            self.http_register_initial if initial is None else initial,
            self.http_register_multiplier if multiplier is None else multiplier,
            self.http_register_max if max_interval is None else max_interval,
            HTTP_REGISTER_JITTER,
        )
        while True:
            if self._closed:
                raise KontrolError("the kite is closed")
            try:
                return self.register_http(url)
            except NoKontrolURLError:
                raise  # retrying cannot fix the configuration
            except Exception as exc:
                delay = next(delays)
                self.kite.log.error("Cannot register to Kontrol: %s Will retry after %.1f seconds", exc, delay)
                gevent.sleep(delay)

    # -- lookups -----------------------------------------------------------------

    def _get_kites(
        self, query: KontrolQuery, watch_callback: Callable[..., Any] | None
    ) -> tuple[list[dict[str, Any]], str]:
        """``getKites``: the validated entries and the ``watcherID`` (or ``""``)."""
        args = {"query": query.to_wire(), "watchCallback": watch_callback, "who": None}
        raw = self.tell("getKites", self.kite.config.timeout, args)
        try:
            return parse_get_kites_result(raw)
        except ValueError as exc:
            raise InvalidResponseError(f"getKites: {exc}") from None

    def get_kites(self, query: Any = None, **fields: str) -> list[Client]:
        """Undialed token clients for the matching kites; see :meth:`kite.Kite.get_kites`."""
        entries, _ = self._get_kites(KontrolQuery.from_any(query, **fields), None)
        if not entries:
            raise NoKitesAvailableError()
        return [self._client_for(entry) for entry in entries]

    def _client_for(self, entry: dict[str, Any]) -> Client:
        client = self.kite.new_client(entry["url"])
        client.kite = KiteIdentity.from_wire(entry["kite"])
        client.auth = Auth(TOKEN, entry["token"])
        try:
            renewer = TokenRenewer(client, self._renewed_token, renew_before=self.token_renew_before,
                                   retry_interval=self.token_retry_interval)
            renewer.renew_when_expires()
        except ValueError as exc:
            self.kite.log.error("Error in token. Token will not be renewed when it expires: %s", exc)
        return client

    def _renewed_token(self, client: Client) -> str:
        """The token source of ``get_kites`` clients: ``getToken`` with the target's whole identity.

        Go's renewer asks by id alone (§5.6), which the Go Kontrol on etcd cannot answer (it
        reads the stored value as a key path: ``100: Key not found``, koding/kite#224); every
        Kontrol answers the full query, and its token's audience is the kite's
        ``/username/environment/name`` rather than the root ``/``."""
        return self.get_token(KontrolQuery.from_any(client.kite))

    def dial_kite(self, query: Any = None, timeout: float | None = None, **fields: str) -> Client:
        """Find and dial one matching kite; see :meth:`kite.Kite.dial_kite`."""
        clients = self.get_kites(query, **fields)
        random.shuffle(clients)
        last_error: Exception | None = None
        for client in clients:
            try:
                client.dial_timeout(client.dial_timeout_seconds if timeout is None else timeout)
                return client
            except Exception as exc:
                self.kite.log.info("cannot dial %s at %s (%s); trying the next one", client.kite, client.url, exc)
                client.close()
                last_error = exc
        assert last_error is not None
        raise last_error

    def watch_kites(self, query: Any, callback: Callable[[dict[str, Any]], Any], **fields: str) -> Watcher:
        """Watch REGISTER/DEREGISTER events; see :meth:`kite.Kite.watch_kites`."""
        watcher = Watcher(self, KontrolQuery.from_any(query, **fields), callback)
        watcher._watch()
        self._watchers.append(watcher)
        return watcher

    def _forget_watcher(self, watcher: Watcher) -> None:
        if watcher in self._watchers:
            self._watchers.remove(watcher)
        if self.client is not None:
            scrubber = self.client._scrubber
            for cb_id, fn in list(scrubber.callbacks.items()):
                if fn is watcher._watch_callback:
                    scrubber.remove(cb_id)

    def get_token(self, query: Any, force: bool = False) -> str:
        """A token for the one kite ``query`` matches; see :meth:`kite.Kite.get_token`."""
        args: dict[str, Any] = KontrolQuery.from_any(query).to_wire()
        if force:
            args["force"] = True  # [2018] skip Kontrol's token cache
        token = self.tell("getToken", self.kite.config.timeout, args)
        if not isinstance(token, str) or not token:
            raise InvalidResponseError(f"getToken: expected a token string, got {token!r}")
        return token

    def get_key(self) -> str:
        """Fetch Kontrol's public key and trust it; see :meth:`kite.Kite.get_key`."""
        key = self.tell("getKey", self.kite.config.timeout)
        if not isinstance(key, str) or not key:
            raise InvalidResponseError(f"getKey: expected a PEM string, got {key!r}")
        try:
            self.kite.update_auth(public_key=key)
        except ValueError as exc:
            raise InvalidResponseError(f"getKey: {exc}") from None
        return key

    def new_key_renewer(self, interval: float) -> KeyRenewer:
        """Run :meth:`get_key` every ``interval`` seconds; see :meth:`kite.Kite.new_key_renewer`."""
        return KeyRenewer(self, interval)

    # -- lifetime ------------------------------------------------------------------

    def _spawn(self, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet[..., Any]:
        if self._closed:
            raise KontrolError("the kite is closed")
        return self._greenlets.spawn(fn, *args)

    def _spawn_later(self, seconds: float, fn: Callable[..., Any], *args: Any) -> gevent.Greenlet[..., Any]:
        greenlet = gevent.spawn_later(seconds, fn, *args)
        self._greenlets.add(greenlet)
        return greenlet

    def close(self) -> None:
        """Stop registering, heartbeating and renewing, and close the Kontrol connection."""
        if self._closed:
            return
        self._closed = True
        self._greenlets.kill(block=False)
        if self.http_heartbeat is not None:
            self.http_heartbeat.stop()
        for watcher in self._watchers:
            watcher.cancelled = True
        self._watchers.clear()
        self._resolve_register_waiters(None, KontrolError("the kite is closed"))
        if self.client is not None:
            self.client.close()
        self._connected.clear()
