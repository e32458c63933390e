"""A bounded pool of keep-alive HTTP/1.1 connections to a server (or the members of a cluster).

Both etcd clients sit on it: :mod:`kontrol.storage.etcdhttp` (v3 gateway, JSON ``POST``) and
:mod:`kontrol.storage.etcd2http` (v2 keys API). The connections are
:class:`kontrol.storage.http11.Connection` s: in a monkey-patched gevent process a request on a
kept-alive one costs ~60 µs of CPU, against ~200 µs through ``http.client``, ~290 µs through
urllib3 and ~600 µs through ``requests``.

Discipline: at most ``pool_size`` connections; a caller waits for a free one instead of
opening more (the Go Kontrol's unbounded pool lost kites). A request that fails on a reused
connection before any answer (the server closed it while idle, or restarted) is retried once
on a fresh one. Any other failure closes the connection it happened on.

Failover: a pool may know several members of one cluster (``failover``: the members besides
``host:port``). Requests go to one member at a time. A request that cannot connect to it
(nothing was sent) moves on to the next member at once, each member tried once per request;
a request that fails after it was sent (a timeout, a reset, or an answer with one of the
``unavailable_statuses``, e.g. etcd's 503 "no leader") is not sent again (it may have been
applied), but the pool moves on to the next member for the requests that follow.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from collections.abc import Collection, Sequence
from typing import NamedTuple

from gevent.lock import BoundedSemaphore

from .http11 import BodyTimeout, Connection, Headers

log = logging.getLogger(__name__)

#: Failures of a reused connection that mean "closed while idle": safe to retry on a new one.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
#: No extra request headers.
NO_HEADERS: dict[str, str] = {}
#: ``(host, port)`` of one server (one member of a cluster).
Endpoint = tuple[str, int]


class _NotSent(Exception):
    """Connecting to a member failed: the request was never sent (safe to send to another member)."""

    def __init__(self, cause: OSError) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Request(NamedTuple):
    """One request of a pipelined batch (:meth:`HttpPool.request_all`)."""

    method: str
    target: str
    body: bytes | None = None
    headers: dict[str, str] = NO_HEADERS


class Reply(NamedTuple):
    """One HTTP answer, read in full."""

    status: int
    headers: Headers
    body: bytes


def tls_context(ca_cert: str | None = None, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """A client TLS context: the system CAs (or ``ca_cert``), and a client certificate ``(cert, key)``."""
    context = ssl.create_default_context(cafile=ca_cert)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


class HttpPool:
    """Requests to ``host:port`` (or, failing over, the ``failover`` members) over at most ``pool_size``
    keep-alive connections.

    ``timeout`` (seconds) bounds connecting and each read; a request may ask for another read
    timeout (a long poll). Raises ``TimeoutError`` (:class:`BodyTimeout` once the headers
    arrived) when the server does not answer in time, and another ``OSError`` or
    ``http.client.HTTPException`` when it cannot be reached or answers garbage. With several
    members, see the module docstring for when a request moves to the next one.
    """

    def __init__(self, host: str, port: int, protocol: str = "http", *, timeout: float = 5.0, pool_size: int = 10,
                 ssl_context: ssl.SSLContext | None = None, failover: Sequence[Endpoint] = (),
                 unavailable_statuses: Collection[int] = ()):
        #: Every member, the one requests go to first.
        self.endpoints: list[Endpoint] = [(host, port)]
        self.endpoints += [(h, p) for h, p in failover if (h, p) not in self.endpoints]
        self._member = 0
        self.timeout = timeout
        self._unavailable = frozenset(unavailable_statuses)
        self._tls = ssl_context if protocol == "https" else None
        if protocol == "https" and self._tls is None:
            self._tls = tls_context()
        self._idle: list[Connection] = []
        self._slots = BoundedSemaphore(pool_size)
        self._closed = False

    @property
    def endpoint(self) -> Endpoint:
        """The member requests go to now."""
        return self.endpoints[self._member]

    @property
    def host(self) -> str:
        return self.endpoint[0]

    @property
    def port(self) -> int:
        return self.endpoint[1]

    def fail_over(self, failed: Endpoint, cause: object) -> None:
        """``failed`` did not serve a request: send the next ones to the next member (if it is still the
        current one: concurrent failures of one member move on once)."""
        if len(self.endpoints) < 2 or self.endpoint != failed:
            return
        self._member = (self._member + 1) % len(self.endpoints)
        log.warning("%s:%s failed (%s); failing over to %s:%s", *failed, cause, *self.endpoint)
        kept = [conn for conn in self._idle if (conn.host, conn.port) != failed]
        for conn in self._idle:
            if (conn.host, conn.port) == failed:
                conn.close()
        self._idle[:] = kept

    def _connect(self) -> Connection:
        host, port = self.endpoint
        return Connection(host, port, self.timeout, self._tls)

    def _fresh(self) -> Connection:
        """A new connection to the current member, connected; :class:`_NotSent` when connecting fails."""
        conn = self._connect()
        try:
            conn.connect()
        except OSError as e:
            conn.close()
            raise _NotSent(e) from e
        return conn

    def _idle_connection(self) -> Connection | None:
        """A kept-alive connection to the current member, if there is one."""
        while self._idle:
            conn = self._idle.pop()
            if (conn.host, conn.port) == self.endpoint:
                return conn
            conn.close()  # to a member we failed over from
        return None

    def request(self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] = NO_HEADERS,
                *, timeout: float | None = None) -> Reply:
        """``method target`` with ``body``; the whole answer, whatever its status.

        ``timeout``: the read timeout of this request (connecting still takes at most the pool's).
        """
        return self.request_all([Request(method, target, body, headers)], timeout=timeout)[0]

    def request_all(self, requests: Sequence[Request], *, timeout: float | None = None) -> list[Reply]:
        """Several requests pipelined on one connection (sent in one write, answered in order: the
        server handles them one after the other, without a round trip between); every answer.
        Failures and failover as for :meth:`request`; a failure after the first answer is never retried."""
        with self._slots:
            for attempt in range(len(self.endpoints)):
                endpoint = self.endpoint
                try:
                    replies = self._request_once(requests, timeout)
                except _NotSent as e:
                    self.fail_over(endpoint, repr(e.cause))
                    if attempt == len(self.endpoints) - 1:
                        raise e.cause from None
                    continue
                except BodyTimeout:
                    raise  # the member answered (a long poll that saw nothing): it is alive
                except (OSError, http.client.HTTPException) as e:
                    self.fail_over(endpoint, repr(e))
                    raise
                unavailable = next((r.status for r in replies if r.status in self._unavailable), None)
                if unavailable is not None:
                    self.fail_over(endpoint, f"HTTP {unavailable}")
                return replies
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _request_once(self, requests: Sequence[Request], timeout: float | None) -> list[Reply]:
        """The requests to the current member (:class:`_NotSent` when it cannot be reached)."""
        conn = self._idle_connection()
        reused = conn is not None
        if conn is None:
            conn = self._fresh()
        try:
            replies = self._exchange(conn, requests, timeout)
        except STALE as e:
            conn.close()
            if not reused:
                raise
            log.debug("%s:%s closed an idle connection (%r); retrying on a new one", conn.host, conn.port, e)
            conn = self._fresh()
            try:
                replies = self._exchange(conn, requests, timeout)
            except BaseException:
                conn.close()
                raise
        except BaseException:
            conn.close()
            raise
        if self._closed or conn.sock is None or (conn.host, conn.port) != self.endpoint:
            conn.close()
        else:
            self._idle.append(conn)
        return replies

    def _exchange(self, conn: Connection, requests: Sequence[Request], timeout: float | None) -> list[Reply]:
        answers = conn.exchange_all(requests, timeout)
        if not answers[-1].keep_alive:
            conn.close()  # not kept: the next request opens another
        return [Reply(answer.status, answer.headers, answer.body) for answer in answers]

    def clear(self) -> None:
        """Close the idle connections: the next requests connect afresh."""
        while self._idle:
            self._idle.pop().close()

    def close(self) -> None:
        """Close the idle connections (and each busy one as it comes back)."""
        self._closed = True
        self.clear()
