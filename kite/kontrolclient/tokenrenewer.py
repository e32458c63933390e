"""``TokenRenewer``: keeps a client's ``token`` credential fresh (PROTOCOL.md §5.6).

A renewer watches the ``exp`` of the client's token and fetches a new one from a
*token source* :data:`RENEW_BEFORE` seconds before it expires, and at once when a
call fails with ``token is expired`` (the client's ``on_token_expire`` event).
The new token replaces ``client.auth`` and the client's ``on_token_renew``
handlers run with it. The loop runs while the client is connected, as in Go.

The token source is any function ``source(client) -> token``: Kontrol's
``getToken`` in production, :func:`kite.testutil.token_source` in tests::

    renewer = TokenRenewer(client, lambda c: kite.get_token(KiteIdentity(id=c.kite.id)))
    renewer.renew_when_expires()

The timings are parameters so tests can observe renewals within seconds.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from kite.auth import TOKEN, token_expiry
from kite.errors import KiteError

if TYPE_CHECKING:
    from kite.client import Client

log = logging.getLogger("kite.tokenrenewer")

#: Renew this many seconds before ``exp`` (Go's ``renewBefore``): enough for a
#: Kontrol round trip and for clocks a little apart.
RENEW_BEFORE = 30.0
#: After a failed renewal, try again this many seconds later (Go's ``retryInterval``).
RETRY_INTERVAL = 10.0
#: Pause right after a failure, so a burst of "token is expired" replies cannot
#: make the renewer hammer Kontrol (Go sleeps 1 s too).
RETRY_PAUSE = 1.0
#: Least time between two scheduled renewals. A source that hands out tokens
#: already inside the renewal window (a TTL shorter than ``renew_before``, or
#: whole-second ``exp`` values) would otherwise make the loop spin against Kontrol.
MIN_RENEW_INTERVAL = 1.0

#: ``source(client) -> token``: where new tokens come from.
TokenSource = Callable[["Client"], str]


class TokenRenewer:
    """Renews ``client``'s token through ``token_source`` just before it expires.

    Creating a renewer attaches it to the client (``client.token_renewer``), which
    also makes the client renew and retry once when a call fails with ``token is
    expired``. Call :meth:`renew_when_expires` to start the background loop.
    Raises ``ValueError`` if the client's current token has no usable ``exp``.
    """

    def __init__(
        self,
        client: Client,
        token_source: TokenSource,
        *,
        renew_before: float = RENEW_BEFORE,
        retry_interval: float = RETRY_INTERVAL,
        retry_pause: float = RETRY_PAUSE,
        min_interval: float = MIN_RENEW_INTERVAL,
        clock: Callable[[], float] = time.time,
    ):
        self.client = client
        self.token_source = token_source
        self.renew_before = renew_before
        self.retry_interval = retry_interval
        self.retry_pause = retry_pause
        self.min_interval = min_interval
        self.clock = clock
        self._last_renewal = float("-inf")
        #: ``exp`` of the current token (Unix seconds); 0 renews at once.
        self.valid_until = 0.0
        self._lock = Semaphore()
        self._wake = Event()
        self._requested = False
        self._requested_stale: str | None = None
        self._retry_at: float | None = None
        self._generation = 0
        self._active = False
        self._loop: gevent.Greenlet[[int], None] | None = None
        key = self._current_key()
        if key:
            try:
                self.valid_until = token_expiry(key)
            except KiteError as exc:
                raise ValueError(f"cannot parse token: {exc.message}") from None
        client.token_renewer = self

    def __repr__(self) -> str:
        return f"<TokenRenewer {self.client!r} valid_until={self.valid_until:.0f}>"

    def _current_key(self) -> str:
        auth = self.client.auth
        return auth.key if auth is not None and auth.type == TOKEN else ""

    # -- scheduling -------------------------------------------------------------

    def renew_duration(self) -> float:
        """Seconds from now until the token should be renewed (negative: overdue)."""
        return self._due_at() - self.clock()

    def _due_at(self) -> float:
        if self._retry_at is not None:
            return self._retry_at
        return max(self.valid_until - self.renew_before, self._last_renewal + self.min_interval)

    def renew_when_expires(self) -> None:
        """Start renewing: on every connect, until the next disconnect (idempotent)."""
        if self._active:
            return
        self._active = True
        self.client.on_connect(lambda c: self._start())
        self.client.on_disconnect(lambda c: self._stop())
        self.client.on_token_expire(self._on_token_expire)
        if self.client.connected:
            self._start()

    def stop(self) -> None:
        """Stop the background loop (it restarts on the next connect if :meth:`renew_when_expires` ran)."""
        self._stop()

    def _start(self) -> None:
        self._generation += 1
        self._loop = gevent.spawn(self._run, self._generation)

    def _stop(self) -> None:
        self._generation += 1
        self._wake.set()

    def _on_token_expire(self, client: Client) -> None:
        self._requested = True
        self._requested_stale = client._expired_token
        self._wake.set()

    def _run(self, generation: int) -> None:
        while generation == self._generation:
            self._wake.wait(max(0.0, self.renew_duration()))
            self._wake.clear()
            if generation != self._generation:
                return
            requested, self._requested = self._requested, False
            if not requested and self.clock() < self._due_at():
                continue  # woken to reschedule (a renewal happened elsewhere)
            try:
                self.renew(self._requested_stale if requested else None)
            except Exception as exc:
                log.error(
                    "token renewer: cannot renew token for %s: %s; retrying in %g s",
                    self.client.url or self.client.kite,
                    exc,
                    self.retry_interval,
                )
                gevent.sleep(self.retry_pause)
                self._retry_at = self.clock() + self.retry_interval

    # -- renewing ---------------------------------------------------------------

    def renew(self, stale: str | None = None) -> str:
        """Fetch a new token now, install it and return it.

        With ``stale``, nothing is fetched when the client's token already
        differs from it (another greenlet renewed meanwhile). Raises whatever the
        token source raises, or ``ValueError`` for a token without ``exp``.
        Counted in the kite's ``kite_token_renewals_total`` when its metrics are on.
        """
        try:
            return self._renew(stale)
        except Exception:
            self.client.local_kite.metrics.count_token_renewal(False)
            raise

    def _renew(self, stale: str | None) -> str:
        with self._lock:
            current = self._current_key()
            if stale is not None and current and current != stale:
                return current
            token = self.token_source(self.client)
            if not isinstance(token, str) or not token:
                raise ValueError("token source returned no token")
            try:
                valid_until = token_expiry(token)
            except KiteError as exc:
                raise ValueError(f"cannot parse token: {exc.message}") from None
            self.valid_until = valid_until
            self._retry_at = None
            self._last_renewal = self.clock()
            self.client._token_renewed(token)
            self.client.local_kite.metrics.count_token_renewal(True)
            self._wake.set()  # reschedule the loop for the new expiry
            return token
