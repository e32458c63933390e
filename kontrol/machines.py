"""Who may get a kite key through ``registerMachine`` (PROTOCOL.md §7.6).

The original's stock Kontrol refuses everyone (its hooks are unset). Ours refuses by
default too (:func:`~kontrol.kontrol.refuse_machines`); :func:`password_authenticator`
opens it to callers who know a shared machine password, optionally only for some users.
The password travels in the call: serve Kontrol over TLS when it is used beyond loopback.

Failed attempts are rate limited whatever the authenticator (:class:`MachineRateLimit`,
which ``Kontrol.machine_rate_limit`` holds and the ``registerMachine`` handler applies).
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Collection

from kite import Request, RequestLimitError
from kite.method import REQUEST_LIMIT_MESSAGE

log = logging.getLogger("kontrol.machines")

#: The ``authType`` a password-authenticated ``registerMachine`` carries.
PASSWORD_AUTH = "password"


def password_authenticator(password: str, users: Collection[str] = ()) -> Callable[[str, Request], None]:
    """A machine authenticator that lets through ``registerMachine [{"authType": "password",
    "password": P}]`` when P is ``password`` (compared in constant time) and, if ``users`` is
    not empty, the caller's username is one of them. Raises ``ValueError`` for an empty password."""
    if not password:
        raise ValueError("the machine password is empty")
    expected = password.encode()
    allowed = frozenset(users)

    def authenticate(auth_type: str, request: Request) -> None:
        if auth_type.lower() != PASSWORD_AUTH:
            raise PermissionError(f'authType must be "{PASSWORD_AUTH}", got {auth_type!r}')
        arg = request.args[0] if len(request.args) else None
        given = arg.get("password") if isinstance(arg, dict) else None
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected):
            raise PermissionError("wrong machine password")
        username = request.client.kite.username
        if allowed and username not in allowed:
            raise PermissionError(f"user {username!r} may not register machines here")

    return authenticate


# --------------------------------------------------------------------------- rate limit

#: Failed ``registerMachine`` attempts one remote address may make in a burst, and one more
#: every :data:`ADDRESS_REFILL_SECONDS` after that: a person mistyping the password has room
#: to retry; a guesser on one host gets 10 a minute (the Go Kontrol has no limit at all).
ADDRESS_BURST = 10
ADDRESS_REFILL_SECONDS = 6.0
#: The same per claimed username (over all addresses): a password guesser spread over many
#: hosts cannot hammer one user's name faster than this.
USERNAME_BURST = 10
USERNAME_REFILL_SECONDS = 6.0
#: The same over the whole Kontrol: the machine password is shared by every user, so a guesser
#: rotating addresses and usernames still gets at most 60 guesses in a burst, then one a second.
GLOBAL_BURST = 60
GLOBAL_REFILL_SECONDS = 1.0
#: Addresses or usernames tracked at most per table (least recently failed are forgotten first):
#: a peer claiming endless usernames cannot grow Kontrol's memory.
MAX_TRACKED_KEYS = 10_000


class FailureBuckets:
    """Token buckets keyed by a string, counting failures: each key starts with ``burst`` tokens
    and gains one every ``refill_seconds``, up to ``burst``. A full bucket is not stored.

    Used from one gevent hub: no method yields, so no lock is needed.
    """

    def __init__(self, burst: int, refill_seconds: float, max_keys: int = MAX_TRACKED_KEYS,
                 clock: Callable[[], float] = time.monotonic):
        if burst < 1 or refill_seconds <= 0:
            raise ValueError("a rate limit needs burst >= 1 and refill_seconds > 0")
        self.burst = burst
        self.refill_seconds = refill_seconds
        self.max_keys = max_keys
        self.clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # key -> (tokens, at)

    def tokens(self, key: str) -> float:
        """Tokens ``key`` has now (``burst`` for a key never seen or fully refilled)."""
        entry = self._buckets.get(key)
        if entry is None:
            return float(self.burst)
        tokens, at = entry
        tokens = min(float(self.burst), tokens + (self.clock() - at) / self.refill_seconds)
        if tokens >= self.burst:
            del self._buckets[key]
        return tokens

    def retry_after(self, key: str) -> float:
        """Seconds until ``key`` has a token again (0: it has one now)."""
        return max(0.0, (1.0 - self.tokens(key)) * self.refill_seconds)

    def take(self, key: str) -> None:
        """Spend one token of ``key`` (callers check :meth:`retry_after` first)."""
        self._set(key, self.tokens(key) - 1.0)

    def give_back(self, key: str) -> None:
        """Return the token a :meth:`take` spent (the attempt succeeded)."""
        self._set(key, self.tokens(key) + 1.0)

    def _set(self, key: str, tokens: float) -> None:
        if tokens >= self.burst:
            self._buckets.pop(key, None)
            return
        now = self.clock()
        self._buckets[key] = (tokens, now)
        self._buckets.move_to_end(key)
        # Least recently changed first: drop those refilled by now, and any beyond the bound.
        while self._buckets:
            oldest, (old_tokens, at) = next(iter(self._buckets.items()))
            if len(self._buckets) <= self.max_keys and old_tokens + (now - at) / self.refill_seconds < self.burst:
                break
            del self._buckets[oldest]

    def __len__(self) -> int:
        return len(self._buckets)


class MachineRateLimit:
    """The ``registerMachine`` guard against password guessing: failure buckets per remote
    address, per claimed username and for the whole Kontrol.

    Every attempt takes a token from all three before the machine authenticator runs, and
    gets them back when it succeeds, so only failures count; when any bucket is empty the
    attempt is refused with a :class:`~kite.errors.RequestLimitError` (Go's throttle text
    and when to retry) **without** asking the authenticator, so that a right guess is not
    told apart from a wrong one while the limit holds. Behind a proxy every caller has the
    proxy's address: the username and global buckets still hold.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self.by_address = FailureBuckets(ADDRESS_BURST, ADDRESS_REFILL_SECONDS, clock=clock)
        self.by_username = FailureBuckets(USERNAME_BURST, USERNAME_REFILL_SECONDS, clock=clock)
        self.overall = FailureBuckets(GLOBAL_BURST, GLOBAL_REFILL_SECONDS, clock=clock)

    def _buckets(self, address: str, username: str) -> list[tuple[str, FailureBuckets, str]]:
        return [("address", self.by_address, address), ("username", self.by_username, username),
                ("kontrol", self.overall, "")]

    def begin(self, address: str, username: str) -> None:
        """Take this attempt's tokens, or raise :class:`RequestLimitError` (and log it) when one is empty."""
        buckets = self._buckets(address, username)
        for what, table, key in buckets:
            wait = table.retry_after(key)
            if wait > 0:
                log.warning("registerMachine refused: too many failed attempts (%s limit) from %s for user %r; "
                            "retry in %.0f s", what, address or "?", username, math.ceil(wait))
                raise RequestLimitError(
                    f"{REQUEST_LIMIT_MESSAGE} registerMachine: too many failed attempts, retry in {math.ceil(wait)} s"
                )
        for _, table, key in buckets:
            table.take(key)

    def succeeded(self, address: str, username: str) -> None:
        """The attempt :meth:`begin` counted succeeded: give its tokens back."""
        for _, table, key in self._buckets(address, username):
            table.give_back(key)
