"""A bounded pool of keep-alive HTTP/1.1 connections to one server.

Both etcd clients sit on it: :mod:`kontrol.storage.etcdhttp` (v3 gateway, JSON ``POST``) and
:mod:`kontrol.storage.etcd2http` (v2 keys API). The connections are
:class:`kontrol.storage.http11.Connection` s: in a monkey-patched gevent process a request on a
kept-alive one costs ~60 µs of CPU, against ~200 µs through ``http.client``, ~290 µs through
urllib3 and ~600 µs through ``requests``.

Discipline: at most ``pool_size`` connections; a caller waits for a free one instead of
opening more (the Go Kontrol's unbounded pool lost kites). A request that fails on a reused
connection before any answer (the server closed it while idle, or restarted) is retried once
on a fresh one. Any other failure closes the connection it happened on.
"""

from __future__ import annotations

import http.client
import logging
import ssl
from typing import NamedTuple

from gevent.lock import BoundedSemaphore

from .http11 import BodyTimeout as BodyTimeout  # re-exported: the etcd clients catch it
from .http11 import Connection, Headers

log = logging.getLogger(__name__)

#: Failures of a reused connection that mean "closed while idle": safe to retry on a new one.
STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)
#: No extra request headers.
NO_HEADERS: dict[str, str] = {}


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
    """Requests to one ``host:port`` over at most ``pool_size`` keep-alive connections.

    ``timeout`` (seconds) bounds connecting and each read; a request may ask for another read
    timeout (a long poll). Raises ``TimeoutError`` (:class:`BodyTimeout` once the headers
    arrived) when the server does not answer in time, and another ``OSError`` or
    ``http.client.HTTPException`` when it cannot be reached or answers garbage.
    """

    def __init__(self, host: str, port: int, protocol: str = "http", *, timeout: float = 5.0, pool_size: int = 10,
                 ssl_context: ssl.SSLContext | None = None):
        self.host, self.port = host, port
        self.timeout = timeout
        self._tls = ssl_context if protocol == "https" else None
        if protocol == "https" and self._tls is None:
            self._tls = tls_context()
        self._idle: list[Connection] = []
        self._slots = BoundedSemaphore(pool_size)
        self._closed = False

    def _connect(self) -> Connection:
        return Connection(self.host, self.port, self.timeout, self._tls)

    def request(self, method: str, target: str, body: bytes | None = None, headers: dict[str, str] = NO_HEADERS,
                *, timeout: float | None = None) -> Reply:
        """``method target`` with ``body``; the whole answer, whatever its status.

        ``timeout``: the read timeout of this request (connecting still takes at most the pool's).
        """
        with self._slots:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else self._connect()
            try:
                reply = self._exchange(conn, method, target, body, headers, timeout)
            except STALE as e:
                conn.close()
                if not reused:
                    raise
                log.debug("%s:%s closed an idle connection (%r); retrying on a new one", self.host, self.port, e)
                conn = self._connect()
                try:
                    reply = self._exchange(conn, method, target, body, headers, timeout)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                conn.close()
                raise
            if self._closed or conn.sock is None:
                conn.close()
            else:
                self._idle.append(conn)
        return reply

    def _exchange(self, conn: Connection, method: str, target: str, body: bytes | None,
                  headers: dict[str, str], timeout: float | None) -> Reply:
        answer = conn.exchange(method, target, body, headers, timeout)
        if not answer.keep_alive:
            conn.close()  # not kept: the next request opens another
        return Reply(answer.status, answer.headers, answer.body)

    def clear(self) -> None:
        """Close the idle connections: the next requests connect afresh."""
        while self._idle:
            self._idle.pop().close()

    def close(self) -> None:
        """Close the idle connections (and each busy one as it comes back)."""
        self._closed = True
        self.clear()
