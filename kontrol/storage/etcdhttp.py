"""JSON over keep-alive HTTP/1.1 to etcd's v3 gateway, on the standard library's ``http.client``.

Every unary call of the etcd v3 backend (range, txn, lease grant, keep-alive, revoke) is one
``POST /v3/<path>`` with a JSON body. ``requests`` (through ``etcd3gw``) spent ~600 µs of
CPU on each in a monkey-patched process, ``http.client`` ~170 µs (measured side by side on
one etcd, 2,000 calls each); registration and refresh are a few calls per kite, so this
was the registry's largest cost on etcd. The watch stream stays on ``requests`` (one
long-lived response, read incrementally).

:class:`EtcdHttp` is a :class:`~kontrol.storage.httppool.HttpPool`: at most ``pool_size``
connections, a caller waits for a free one instead of opening more, and a call that fails
on a reused connection before any answer is retried once on a fresh one.
"""

from __future__ import annotations

from typing import Any

import orjson

from .httppool import HttpPool, tls_context

__all__ = ["API_PATH", "EtcdHttp", "EtcdHttpError", "tls_context"]

#: Path of etcd's v3 gateway (etcd >= 3.4).
API_PATH = "/v3"
_HEADERS = {"Content-Type": "application/json"}


class EtcdHttpError(Exception):
    """etcd answered with an HTTP status other than 200; ``text`` is its body (JSON with ``error``/``message``)."""

    def __init__(self, status: int, text: str):
        super().__init__(f"HTTP {status}: {text[:300]}")
        self.status = status
        self.text = text


class EtcdHttp(HttpPool):
    """``POST`` JSON to one etcd's gateway over at most ``pool_size`` keep-alive connections.

    ``timeout`` (seconds) bounds connecting and each read. Raises :class:`EtcdHttpError` for
    an HTTP error status, ``TimeoutError`` when etcd does not answer in time, and another
    ``OSError`` (or ``http.client.HTTPException``) when it cannot be reached.
    """

    def post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        """``POST /v3<path>`` with ``payload``; the decoded answer."""
        status, _, data = self.request("POST", API_PATH + path, orjson.dumps(payload), _HEADERS)
        if status != 200:
            raise EtcdHttpError(status, data.decode(errors="replace"))
        answer: dict[str, Any] = orjson.loads(data)
        return answer
