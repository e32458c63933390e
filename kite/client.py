"""``Client``: one peer of a kite, dialed by us or connected to us.

On the dialing side a client owns the URL, the transport choice, reconnects
with exponential back-off and the dnode callback ids, which keep counting across reconnects. On
the serving side the kite creates one per incoming session, and handlers reach
it as ``request.client`` to call back into their caller.

``tell()`` blocks the calling greenlet only; it works in a plain script that
never monkey-patched (websocket transports), since the library waits on gevent
primitives itself.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, overload

import gevent
from gevent.event import AsyncResult, Event

from .config import normalize_transport
from .connection import CONNECTION_STATS, Connection, Reply, ReplyWaiter
from .errors import KiteError, SendError, TimeoutError
from .transport.session import Session
from .wire import dnode
from .wire.protocol import Auth, KiteIdentity

if TYPE_CHECKING:
    from .kite import Kite
    from .kontrolclient.tokenrenewer import TokenRenewer

log = logging.getLogger("kite.client")

#: Back-off of reconnects (cenkalti/backoff defaults, as the Go client): first
#: wait, growth factor and the +-jitter fraction; the cap comes from the config.
BACKOFF_INITIAL = 0.5
BACKOFF_MULTIPLIER = 1.5
BACKOFF_JITTER = 0.5


def backoff_delays(initial: float, multiplier: float, cap: float, jitter: float = BACKOFF_JITTER) -> Iterator[float]:
    """Endless exponential back-off delays with +-``jitter`` randomisation."""
    interval = initial
    while True:
        yield interval * (1 + random.uniform(-jitter, jitter))
        interval = min(interval * multiplier, cap)


class Client:
    """A connection to another kite.

    Create dialing clients with :meth:`Kite.new_client`; the kite creates
    serving-side clients itself.
    """

    def __init__(self, local_kite: Kite, url: str = "", transport: str | None = None):
        self.local_kite = local_kite
        self.url = url
        #: The remote kite's identity (from the first request on a served session).
        self.kite = KiteIdentity()
        #: Credentials sent with every call.
        self.auth: Auth | None = None
        #: Redial after a disconnect (set by :meth:`dial_forever`).
        self.reconnect = False
        #: Run incoming calls concurrently (``False``: one at a time, in order).
        self.concurrent = not local_kite.config.disable_concurrency
        self.transport = normalize_transport(transport or local_kite.config.transport)
        #: Seconds bounding each dial; ``None`` for no bound.
        self.dial_timeout_seconds = local_kite.config.dial_timeout
        #: TLS certificate check for ``https``/``wss``: ``True`` (system CAs), a CA bundle path, or ``False``.
        self.verify: bool | str = True
        self._scrubber = dnode.Scrubber()
        self._conn: Connection | None = None
        self._dialed = True
        self._first_request_done = False
        self._closed = False
        self._connected_once = Event()
        self._dial_loop: gevent.Greenlet[[], None] | None = None
        self._on_connect: list[Callable[[Client], Any]] = []
        self._on_disconnect: list[Callable[[Client], Any]] = []
        self._on_token_expire: list[Callable[[Client], Any]] = []
        self._on_token_renew: list[Callable[[str], Any]] = []
        #: The :class:`~kite.kontrolclient.tokenrenewer.TokenRenewer` keeping ``auth`` fresh, if any
        #: (it sets itself here); with one, a call refused with "token is expired"
        #: is retried once with a renewed token.
        self.token_renewer: TokenRenewer | None = None
        #: The token key in use when a call last failed with "token is expired".
        self._expired_token: str | None = None

    def __repr__(self) -> str:
        side = "dialed" if self._dialed else "served"
        return f"<Client {side} {self.url or self.kite} connected={self.connected}>"

    def __enter__(self) -> Client:
        if self._conn is None:
            self.dial()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- state -------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while a session is up."""
        return self._conn is not None and not self._conn.closed

    @property
    def dialed(self) -> bool:
        """True if this process dialed the connection (calls on it skip authentication)."""
        return self._dialed

    @property
    def remote_addr(self) -> str:
        return self._conn.session.remote_addr if self._conn else ""

    def stats(self) -> dict[str, int]:
        """Counts for leak checks and monitoring: the live connection's (:meth:`Connection.stats`,
        zeros without one) and ``callbacks``, local functions the peer may still call."""
        counts = self._conn.stats() if self._conn is not None else dict.fromkeys(CONNECTION_STATS, 0)
        counts["callbacks"] = len(self._scrubber.callbacks)
        return counts

    def on_connect(self, fn: Callable[[Client], Any]) -> Callable[[Client], Any]:
        """Run ``fn(client)`` after every successful dial or redial (usable as a decorator)."""
        self._on_connect.append(fn)
        return fn

    def on_disconnect(self, fn: Callable[[Client], Any]) -> Callable[[Client], Any]:
        """Run ``fn(client)`` after every disconnect (usable as a decorator)."""
        self._on_disconnect.append(fn)
        return fn

    def on_token_expire(self, fn: Callable[[Client], Any]) -> Callable[[Client], Any]:
        """Run ``fn(client)`` when a call fails with "token is expired"."""
        self._on_token_expire.append(fn)
        return fn

    def on_token_renew(self, fn: Callable[[str], Any]) -> Callable[[str], Any]:
        """Run ``fn(token)`` after the token renewer installed a new token."""
        self._on_token_renew.append(fn)
        return fn

    # -- dialing -----------------------------------------------------------

    def dial(self) -> None:
        """Connect once, with the client's dial timeout. Raises ``ConnectionError`` on failure."""
        self.dial_timeout(self.dial_timeout_seconds)

    def dial_timeout(self, timeout: float | None) -> None:
        """Connect once within ``timeout`` seconds."""
        from .transport.sockjs.client import DEAD_PEER_TIMEOUT
        from .transport.sockjs.client import dial as dial_session

        if not self.url:
            raise ValueError("client has no URL to dial")
        self._closed = False
        config = self.local_kite.config
        dead_peer = DEAD_PEER_TIMEOUT if config.dead_peer_timeout is None else config.dead_peer_timeout
        session = dial_session(
            self.url, transport=self.transport, timeout=timeout, verify=self.verify, dead_peer_timeout=dead_peer
        )
        session.max_backlog = config.max_send_backlog
        self._attach(session)

    def dial_forever(self) -> Event:
        """Dial in the background until it works, and redial after every disconnect.

        Returns an event that is set after the first successful dial.
        """
        self.reconnect = True
        self._closed = False
        self._start_dial_loop()
        return self._connected_once

    def _start_dial_loop(self) -> None:
        if self._dial_loop is None or self._dial_loop.dead:
            self._dial_loop = gevent.spawn(self._redial)

    def _redial(self) -> None:
        cap = self.local_kite.config.reconnect_max_interval
        delays = backoff_delays(BACKOFF_INITIAL, BACKOFF_MULTIPLIER, cap)
        while not self._closed and self.reconnect and not self.connected:
            try:
                self.dial()
                return
            except Exception as exc:  # any dial failure: wait and retry
                delay = next(delays)
                log.debug("dial %s failed (%s); retrying in %.1fs", self.url, exc, delay)
                gevent.sleep(delay)

    def _new_connection(self, session: Session) -> Connection:
        concurrency = self.local_kite.config.max_concurrent_calls if self.concurrent else 1
        conn = Connection(session, self._scrubber, self.local_kite._handle_call_for(self), concurrency)
        self.local_kite.metrics.attach(self, conn)  # a no-op unless the kite's metrics are on
        drain = self.local_kite.drain
        if drain.refuses_calls():  # the kite is shutting down: this peer's calls are refused too
            conn.refuse_calls(drain.refuse)
        self._conn = conn
        return conn

    def _attach(self, session: Session) -> None:
        conn = self._new_connection(session)
        gevent.spawn(self._read, conn)
        self._connected_once.set()
        self._run_handlers(self._on_connect, background=True)

    def _read(self, conn: Connection) -> None:
        conn.run()
        self._disconnected(conn)
        if self.reconnect and not self._closed:
            self._start_dial_loop()

    def serve(self, session: Session) -> None:
        """Serve an incoming session in the calling greenlet until it ends (used by the kite)."""
        self._dialed = False
        conn = self._new_connection(session)
        conn.run()
        self._disconnected(conn)

    def _disconnected(self, conn: Connection) -> None:
        # The functions sent to that peer died with its session: a redialed peer never got
        # their ids (they are never reused), so keeping them would only grow the table.
        self._scrubber.callbacks.clear()
        self._run_handlers(self._on_disconnect)

    def _run_handlers(self, handlers: list[Callable[[Client], Any]], background: bool = False) -> None:
        for fn in list(handlers):
            if background:
                gevent.spawn(self._run_handler, fn)
            else:
                self._run_handler(fn)

    def _run_handler(self, fn: Callable[[Client], Any]) -> None:
        try:
            fn(self)
        except Exception:
            log.exception("handler %r failed", fn)

    def close(self) -> None:
        """Stop reconnecting and close the session; pending calls fail with ``disconnect``."""
        self._closed = True
        self.reconnect = False
        if self._dial_loop is not None:
            self._dial_loop.kill(block=False)
        if self._conn is not None:
            self._conn.session.close()

    # -- calling -----------------------------------------------------------

    @overload
    def _start_call(
        self, method: str, args: tuple[Any, ...], result: None = None
    ) -> tuple[Connection, int, AsyncResult[Any]]: ...
    @overload
    def _start_call(
        self, method: str, args: tuple[Any, ...], result: ReplyWaiter
    ) -> tuple[Connection, int, ReplyWaiter]: ...
    def _start_call(
        self, method: str, args: tuple[Any, ...], result: Reply | None = None
    ) -> tuple[Connection, int, Reply]:
        conn = self._conn
        if conn is None:
            raise SendError("can't send, session is not established yet")
        if conn.closed:
            raise SendError("can't send, client is closed")
        auth = self.auth.to_wire() if self.auth is not None else None
        cb_id, result = conn.call(method, self.local_kite.identity_wire(), auth, list(args), result)
        return conn, cb_id, result

    def tell(self, method: str, *args: Any) -> Any:
        """Call ``method`` on the peer and wait for its result (no timeout).

        Raises the peer's error as a :class:`KiteError` subclass.
        """
        return self.tell_with_timeout(method, None, *args)

    def tell_with_timeout(self, method: str, timeout: float | None, *args: Any) -> Any:
        """Call ``method`` and wait at most ``timeout`` seconds (``None`` or 0: forever).

        A call refused with "token is expired" is retried once after the token
        renewer (if any) installed a fresh token.
        """
        try:
            return self._call_and_wait(method, timeout, args)
        except KiteError as exc:
            if not (self._check_token_expired(exc) and self._renew_expired_token()):
                raise
        try:
            return self._call_and_wait(method, timeout, args)
        except KiteError as exc:
            self._check_token_expired(exc)
            raise

    def _call_and_wait(self, method: str, timeout: float | None, args: tuple[Any, ...]) -> Any:
        conn, cb_id, reply = self._start_call(method, args, ReplyWaiter())
        timer = gevent.Timeout(timeout) if timeout else None
        if timer is not None:
            timer.start()
        try:
            return reply.get()
        except gevent.Timeout as exc:
            conn.cancel(cb_id)
            if exc is timer:
                raise TimeoutError(f'No response to "{method}" method in {timeout}s') from None
            raise  # an enclosing timeout of the caller's
        except BaseException:  # killed while waiting (a reply's own error has already left the table)
            conn.cancel(cb_id)
            raise
        finally:
            if timer is not None:
                timer.close()

    def go(self, method: str, *args: Any) -> AsyncResult[Any]:
        """Start a call and return an :class:`~gevent.event.AsyncResult` for its result."""
        return self.go_with_timeout(method, None, *args)

    def go_with_timeout(self, method: str, timeout: float | None, *args: Any) -> AsyncResult[Any]:
        """Like :meth:`go`; the result fails with ``TimeoutError`` after ``timeout`` seconds."""
        conn, cb_id, result = self._start_call(method, args)
        if timeout:
            timer = gevent.get_hub().loop.timer(timeout)

            def expire() -> None:
                if not result.ready():
                    conn.cancel(cb_id)
                    result.set_exception(TimeoutError(f'No response to "{method}" method in {timeout}s'))

            timer.start(expire)
            result.rawlink(lambda _r: timer.close())
        return result

    def _check_token_expired(self, exc: KiteError) -> bool:
        """Run the ``on_token_expire`` handlers if ``exc`` says the token expired (§3.5)."""
        if exc.type == "authenticationError" and "token is expired" in exc.message:
            self._expired_token = self.auth.key if self.auth is not None else None
            self._run_handlers(self._on_token_expire, background=True)
            return True
        return False

    # -- token renewal -------------------------------------------------------

    def _renew_expired_token(self) -> bool:
        """Renew the token that was just refused; True if a new one is in place."""
        renewer = self.token_renewer
        if renewer is None:
            return False
        stale = self._expired_token
        try:
            return renewer.renew(stale) != stale
        except Exception as exc:
            log.warning("cannot renew the expired token for %s: %s", self.url or self.kite, exc)
            return False

    def _token_renewed(self, token: str) -> None:
        """Install a renewed token and run the ``on_token_renew`` handlers (called by the renewer)."""
        self.auth = Auth("token", token)
        for fn in list(self._on_token_renew):
            try:
                fn(token)
            except Exception:
                log.exception("token renew handler %r failed", fn)
