"""JSON over keep-alive HTTP/1.1 to etcd's v3 gateway, on the standard library's ``http.client``.

Every unary call of the etcd v3 backend (range, txn, lease grant, keep-alive, revoke) is one
``POST /v3/<path>`` with a JSON body. ``requests`` (through ``etcd3gw``) spent ~600 µs of
CPU on each in a monkey-patched process, ``http.client`` ~170 µs (measured side by side on
one etcd, 2,000 calls each); registration and refresh are a few calls per kite, so this
was the registry's largest cost on etcd. The watch stream stays on ``requests`` (one
long-lived response, read incrementally).

:class:`EtcdHttp` keeps at most ``pool_size`` connections; a caller waits for a free one
instead of opening more (the Go Kontrol's unbounded pool lost kites). A call that fails on
a reused connection before any answer (etcd closed it while idle, or restarted) is retried
once on a fresh one.
"""

from __future__ import annotations

import http.client
import ssl
from typing import Any

import orjson
from gevent.lock import BoundedSemaphore

#: Path of etcd's v3 gateway (etcd >= 3.4).
API_PATH = "/v3"
_HEADERS = {"Content-Type": "application/json"}
#: Failures of a reused connection that mean "closed while idle": safe to retry on a new one.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class EtcdHttpError(Exception):
    """etcd answered with an HTTP status other than 200; ``text`` is its body (JSON with ``error``/``message``)."""

    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status
        self.text = text


def tls_context(ca_cert: str | None = None, cert: tuple[str, str] | None = None) -> ssl.SSLContext:
    """A client TLS context: the system CAs (or ``ca_cert``), and a client certificate ``(cert, key)``."""
    context = ssl.create_default_context(cafile=ca_cert)
    if cert is not None:
        context.load_cert_chain(*cert)
    return context


class EtcdHttp:
    """``POST`` JSON to one etcd's gateway over at most ``pool_size`` keep-alive connections.

    ``timeout`` (seconds) bounds connecting and each read. Raises :class:`EtcdHttpError` for
    an HTTP error status, ``TimeoutError`` when etcd does not answer in time, and another
    ``OSError`` (or ``http.client.HTTPException``) when it cannot be reached.
    """

    def __init__(self, host: str, port: int, protocol: str = "http", *, timeout: float = 5.0, pool_size: int = 10,
                 ssl_context: ssl.SSLContext | None = None):
        self.host, self.port = host, port
        self.timeout = timeout
        self._tls = ssl_context if protocol == "https" else None
        if protocol == "https" and self._tls is None:
            self._tls = tls_context()
        self._idle: list[http.client.HTTPConnection] = []
        self._slots = BoundedSemaphore(pool_size)
        self._closed = False

    def _connect(self) -> http.client.HTTPConnection:
        if self._tls is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``POST /v3<path>`` with ``payload``; the decoded answer."""
        body = orjson.dumps(payload)
        with self._slots:
            reused = bool(self._idle)
            conn = self._idle.pop() if reused else self._connect()
            try:
                status, data = self._exchange(conn, path, body)
            except _STALE:
                conn.close()
                if not reused:
                    raise
                conn = self._connect()
                try:
                    status, data = self._exchange(conn, path, body)
                except BaseException:
                    conn.close()
                    raise
            except BaseException:
                conn.close()
                raise
            if self._closed:
                conn.close()
            else:
                self._idle.append(conn)
        if status != 200:
            raise EtcdHttpError(status, data.decode(errors="replace"))
        answer: dict[str, Any] = orjson.loads(data)
        return answer

    @staticmethod
    def _exchange(conn: http.client.HTTPConnection, path: str, body: bytes) -> tuple[int, bytes]:
        conn.request("POST", API_PATH + path, body=body, headers=_HEADERS)
        response = conn.getresponse()
        return response.status, response.read()

    def close(self) -> None:
        """Close the idle connections (and each busy one as it comes back)."""
        self._closed = True
        while self._idle:
            self._idle.pop().close()
