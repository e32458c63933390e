"""Steady load on a Kontrol for the fault tests, and the checks every fault makes.

* :class:`CallLog` runs each call of the load and records how it ended: every call must end
  exactly once (a result or an error), none may outlive its stated bound by more than
  :data:`OVERRUN_ALLOWANCE`; :meth:`CallLog.figures` counts the calls ok and failed in a window.
* :func:`new_kite`: a kite of user ``alice`` holding a kite key from the Kontrol at a URL, with a
  ``square`` method, short Kontrol-client timings (registration retries, token renewals).
* :class:`Load`: websocket kites (``register_forever``), HTTP kites (``register_http_forever``),
  callers looping ``get_kites`` and ``getToken``, and users calling ``square`` on kites found
  through ``get_kites`` with tokens their renewers keep fresh. Bounded counts, loopback only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.pool import Group

from kite import Client, Kite, testutil
from kite.testkeys import KeyPair
from kite.wire.protocol import KontrolQuery

#: Seconds a call may end after its stated bound (scheduling on a loaded machine).
OVERRUN_ALLOWANCE = 1.0
#: The user, environment and kite name of the load.
USERNAME, ENVIRONMENT, KITE_NAME = "alice", "prod", "math"
#: Kontrol's user (the issuer of kite keys and tokens).
KONTROL_USER = "koding"
#: The query that finds every kite of the load.
MATH = {"username": USERNAME, "environment": ENVIRONMENT, "name": KITE_NAME}
#: Seconds a Kontrol call waits for the connection, then for the answer (``config.timeout``):
#: a call to Kontrol ends within twice this.
KONTROL_CALL_TIMEOUT = 2.0
#: Seconds a ``square`` call waits for its answer.
SQUARE_TIMEOUT = 2.0
#: Seconds between a registration failure and the next attempt (websocket kites), and the
#: HTTP kites' back-off (first, cap): short, so recovery is quick to observe.
REGISTER_RETRY = 0.5
HTTP_REGISTER_BACKOFF = (0.5, 2.0)
#: Token renewal of ``get_kites`` clients: renew this long before ``exp``, retry a failure after this.
TOKEN_RENEW_BEFORE = 1.0
TOKEN_RETRY_INTERVAL = 0.3
#: Pause between two calls of one load loop.
CALL_PAUSE = 0.1
#: Clock skew the load's kites allow on tokens: small, so that an expired token is refused.
AUTH_LEEWAY = 0.5


@dataclass
class Call:
    """One call of the load: what, when it started, the bound it must end within, how it ended."""

    kind: str
    started: float
    bound: float
    ended: float | None = None
    ok: bool = False
    error: str = ""
    endings: int = 0

    def end(self, ok: bool, error: str = "") -> None:
        self.endings += 1
        self.ended = time.monotonic()
        self.ok, self.error = ok, error


class CallLog:
    """Every call of a load, and the checks on them."""

    def __init__(self) -> None:
        self.calls: list[Call] = []

    def run(self, kind: str, bound: float, fn: Callable[[], Any]) -> Any:
        """``fn()`` recorded as a call of ``kind`` that must end within ``bound`` seconds; its result, or
        None when it raised."""
        call = Call(kind, time.monotonic(), bound)
        self.calls.append(call)
        try:
            result = fn()
        except Exception as exc:
            call.end(False, f"{type(exc).__name__}: {exc}")
            return None
        call.end(True)
        return result

    def problems(self) -> list[str]:
        """Calls that did not end exactly once, or overran their bound by more than the allowance."""
        found = []
        for call in self.calls:
            if call.endings != 1:
                found.append(f"{call.kind} started at {call.started:.1f} ended {call.endings} times")
            elif call.ended is not None and call.ended - call.started > call.bound + OVERRUN_ALLOWANCE:
                found.append(f"{call.kind} took {call.ended - call.started:.1f} s (bound {call.bound:g} s): "
                             f"{call.error or 'ok'}")
        return found

    def figures(self, since: float, until: float) -> tuple[int, int]:
        """``(ok, failed)`` of the calls that started in ``[since, until)``."""
        window = [c for c in self.calls if since <= c.started < until]
        return sum(c.ok for c in window), sum(not c.ok for c in window)

    def errors(self, since: float, until: float, limit: int = 5) -> list[str]:
        """A few distinct errors of the calls that started in the window."""
        return sorted({c.error for c in self.calls if since <= c.started < until and not c.ok})[:limit]


def new_kite(kontrol_url: str, pair: KeyPair, name: str = KITE_NAME) -> Kite:
    """A kite of :data:`USERNAME` with a kite key from the Kontrol at ``kontrol_url`` (signed by ``pair``),
    a ``square`` method and the load's short Kontrol-client timings; not yet served."""
    k = Kite(name, "1.0.0")
    c = k.config
    c.username, c.environment, c.region, c.ip, c.port = USERNAME, ENVIRONMENT, "eu", "127.0.0.1", 0
    c.kite_key = testutil.new_kite_key(USERNAME, kontrol_user=KONTROL_USER, kontrol_url=kontrol_url, key_pair=pair)
    c.kontrol_key, c.kontrol_user, c.kontrol_url = pair.public_pem, KONTROL_USER, kontrol_url
    c.timeout = KONTROL_CALL_TIMEOUT
    c.reconnect_max_interval = 1.0  # redial a restarted Kontrol within a second
    c.auth_leeway = AUTH_LEEWAY
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    kontrol = k.kontrol
    kontrol.retry_interval = REGISTER_RETRY
    kontrol.http_register_initial, kontrol.http_register_max = HTTP_REGISTER_BACKOFF
    kontrol.token_renew_before, kontrol.token_retry_interval = TOKEN_RENEW_BEFORE, TOKEN_RETRY_INTERVAL
    return k


def serve(k: Kite) -> Kite:
    gevent.spawn(k.run)
    assert k.server_ready_notify().wait(10), f"{k} did not serve"
    return k


@dataclass
class User:
    """A client of one kite found through ``get_kites``: its renewals (times) and the kite's id."""

    client: Client
    renewals: list[float] = field(default_factory=list)


class Load:
    """Kites registering and heartbeating, callers finding them and getting tokens, users calling them.

    ``kontrol_url``: where they all go; ``pair``: the key pair kite keys are signed with.
    """

    def __init__(self, kontrol_url: str, pair: KeyPair, *, websocket_kites: int = 3, http_kites: int = 2,
                 users: int = 2) -> None:
        self.kontrol_url = kontrol_url
        self.pair = pair
        self.log = CallLog()
        self.websocket = [serve(new_kite(kontrol_url, pair)) for _ in range(websocket_kites)]
        self.http = [serve(new_kite(kontrol_url, pair)) for _ in range(http_kites)]
        self.caller = new_kite(kontrol_url, pair, name="caller")
        self.users: list[User] = []
        self._user_count = users
        self._loops = Group()
        self._registrars = Group()
        self._stopping = False

    @property
    def kites(self) -> list[Kite]:
        """Every kite that should be registered."""
        return [*self.websocket, *self.http]

    @property
    def kite_ids(self) -> set[str]:
        return {k.id for k in self.kites}

    def start(self) -> None:
        """Register every kite, then start the callers and users once each kite is findable."""
        for k in self.websocket:
            self._registrars.spawn(self._keep_registered, k)
        for k in self.http:
            self._registrars.spawn(k.register_http_forever, k.url)
        self._loops.spawn(self._find_loop)
        self._loops.spawn(self._token_loop)

    def join(self) -> Kite:
        """A new websocket kite joins the load (registering in the background); it."""
        k = serve(new_kite(self.kontrol_url, self.pair))
        self.websocket.append(k)
        self._registrars.spawn(self._keep_registered, k)
        return k

    def leave(self, k: Kite) -> None:
        """Kite ``k`` leaves the load: closed (Kontrol deletes its entry, or its TTL does)."""
        self.websocket.remove(k)
        k.close()

    def _keep_registered(self, k: Kite) -> None:
        try:
            k.register_forever(k.url)
        except Exception:  # the first attempt failed: register_forever retries in the background
            pass

    def add_users(self) -> None:
        """Dial :attr:`_user_count` of the kites found through ``get_kites`` and call them in a loop."""
        clients = self.caller.get_kites(MATH)
        ours = [c for c in clients if c.kite.id in self.kite_ids][: self._user_count]
        for client in ours:
            user = User(client)
            client.on_token_renew(lambda _token, user=user: user.renewals.append(time.monotonic()))
            client.dial()
            self.users.append(user)
            self._loops.spawn(self._use_loop, user)
        for client in clients:
            if client not in ours:
                client.close()

    def _find_loop(self) -> None:
        while not self._stopping:
            self.log.run("getKites", 2 * KONTROL_CALL_TIMEOUT, lambda: self.caller.get_kites(MATH))
            gevent.sleep(CALL_PAUSE)

    def _token_loop(self) -> None:
        n = 0
        while not self._stopping:
            target = self.kites[n % len(self.kites)]
            n += 1
            self.log.run("getToken", 2 * KONTROL_CALL_TIMEOUT,
                         lambda target=target: self.caller.get_token(KontrolQuery.from_any(target.kite())))
            gevent.sleep(CALL_PAUSE)

    def _use_loop(self, user: User) -> None:
        while not self._stopping:
            self.log.run("square", SQUARE_TIMEOUT, lambda: user.client.tell_with_timeout("square", SQUARE_TIMEOUT, 3))
            gevent.sleep(CALL_PAUSE)

    # -- checks -------------------------------------------------------------------------

    def found_ids(self) -> set[str]:
        """The ids ``get_kites`` finds now (empty on an error)."""
        try:
            clients = self.caller.get_kites(MATH)
        except Exception:
            return set()
        for client in clients:
            client.close()
        return {c.kite.id for c in clients}

    def token_works(self) -> bool:
        """A ``getToken`` for each kite succeeds now."""
        try:
            for k in self.kites:
                self.caller.get_token(KontrolQuery.from_any(k.kite()))
        except Exception:
            return False
        return True

    def renewed_since(self, moment: float) -> bool:
        """Every user's token was renewed after ``moment``."""
        return all(any(t > moment for t in user.renewals) for user in self.users)

    def stop(self) -> None:
        """Stop the call loops, letting the calls in flight end (check :attr:`log` after this)."""
        self._stopping = True
        self._loops.join(timeout=2 * KONTROL_CALL_TIMEOUT + OVERRUN_ALLOWANCE)

    def close(self) -> None:
        """Stop the loops, close every kite and client."""
        self.stop()
        self._loops.kill(block=False)
        self._registrars.kill(block=False)
        for user in self.users:
            user.client.close()
        for k in [*self.kites, self.caller]:
            k.close()


def wait_for(condition: Callable[[], bool], timeout: float, pause: float = 0.05) -> float | None:
    """Poll ``condition`` until it holds: the seconds it took, or None after ``timeout``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        gevent.sleep(pause)
    return None


def summary_line(what: str, log: CallLog, since: float) -> str:
    """The calls of a whole test."""
    ok, failed = log.figures(since, time.monotonic())
    return f"FIGURES {what}: {ok} calls ok, {failed} failed"


def stored_ids(url: str, **options: Any) -> set[str]:
    """The ids of the load's kites in the storage at ``url`` itself (a fresh instance; for etcd v3
    without a replica, so etcd is read)."""
    from kontrol.storage import KontrolQuery as StorageQuery
    from kontrol.storage import open_storage

    if url.startswith("etcd://"):
        options.setdefault("replica", False)
    observer = open_storage(url, **options)
    try:
        return {r.kite.id for r in observer.get(StorageQuery(**MATH))}
    finally:
        observer.close()


def figures_line(fault: str, recovery: float | None, log: CallLog, fault_start: float, fault_end: float,
                 since: float) -> str:
    """The figures of one fault: recovery time, calls failed during the fault, calls ok overall."""
    ok_during, failed_during = log.figures(fault_start, fault_end)
    ok_all, failed_all = log.figures(since, time.monotonic())
    recovered = f"{recovery:.2f} s" if recovery is not None else "never"
    return (f"FIGURES {fault}: recovery {recovered}; during the fault {failed_during} calls failed, "
            f"{ok_during} ok; overall {ok_all} ok, {failed_all} failed")


def unique_prefix(kind: str) -> str:
    return f"faults-{kind}-{uuid.uuid4().hex[:8]}"
