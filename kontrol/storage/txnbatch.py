"""Group commit for etcd v3: the transactions of concurrent writers sent as one transaction.

Under registration load many upserts are in flight at once, each one guarded transaction
(``compare`` / ``success`` / ``failure`` operations). :class:`TxnBatcher` sends the first
one at once and, while it is under way, queues the others; the next request carries every
queued transaction at once: their guards ANDed, their operations concatenated, so etcd
applies them atomically and each writer gets its slice of the responses. One HTTP round
trip then serves many writers, which is most of the CPU a write costs.

When the combined guard fails, each writer gets its own ``failure`` responses and does what
it does after a lost race (read, retry alone); a combined request that etcd refuses is
retried one transaction at a time, so one bad write never fails the others. A batch never
holds two writes of the same key (etcd refuses duplicate keys in a transaction) and stays
under etcd's operation limit per transaction (``--max-txn-ops``, 128 by default).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import gevent
from gevent.event import AsyncResult

from .errors import StorageError

#: Operations in one combined transaction at most (etcd's default limit is 128).
MAX_TXN_OPS = 120

Post = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass
class _Txn:
    compare: list[dict[str, Any]]
    success: list[dict[str, Any]]
    failure: list[dict[str, Any]]
    keys: frozenset[str]
    result: AsyncResult[dict[str, Any]] = field(default_factory=AsyncResult)

    @property
    def size(self) -> int:
        return len(self.compare) + max(len(self.success), len(self.failure))


def _keys(ops: list[dict[str, Any]]) -> frozenset[str]:
    """The (base64) keys an operation list touches."""
    return frozenset(next(iter(op.values())).get("key", "") for op in ops)


class TxnBatcher:
    """Sends transactions through ``post("/kv/txn", body)``, combining those that wait together."""

    def __init__(self, post: Post, max_ops: int = MAX_TXN_OPS):
        self._post = post
        self.max_ops = max_ops
        self._queue: list[_Txn] = []
        self._sender: gevent.Greenlet[[], None] | None = None
        #: Requests sent and transactions carried (for tests and benchmarks).
        self.requests = 0
        self.transactions = 0

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]]) -> dict[str, Any]:
        """Run one transaction (blocking); etcd's answer, its responses this transaction's own."""
        item = _Txn(compare, success, failure, _keys(success))
        self._queue.append(item)
        if self._sender is None:
            self._sender = gevent.spawn(self._drain)
        return item.result.get()

    def _drain(self) -> None:
        try:
            while self._queue:
                self._send(self._take())
        finally:
            self._sender = None

    def _take(self) -> list[_Txn]:
        """The next batch: queued transactions in order, no key twice, at most ``max_ops`` operations."""
        batch: list[_Txn] = []
        keys: set[str] = set()
        ops = 0
        for item in list(self._queue):
            if batch and (ops + item.size > self.max_ops or keys & item.keys):
                continue
            batch.append(item)
            keys |= item.keys
            ops += item.size
        for item in batch:
            self._queue.remove(item)
        return batch

    def _send(self, batch: list[_Txn]) -> None:
        body = {"compare": [c for t in batch for c in t.compare], "success": [s for t in batch for s in t.success],
                "failure": [f for t in batch for f in t.failure]}
        try:
            self.requests += 1
            self.transactions += len(batch)
            result = self._post("/kv/txn", body)
        except StorageError as exc:
            if len(batch) == 1:
                batch[0].result.set_exception(exc)
                return
            for item in batch:  # something in the batch was refused: let each one find out alone
                self._send([item])
            return
        except BaseException as exc:  # etcd unreachable: every writer learns it
            for item in batch:
                item.result.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        succeeded = bool(result.get("succeeded"))
        responses = result.get("responses") or []
        offset = 0
        for item in batch:
            count = len(item.success if succeeded else item.failure)
            own = {"header": result.get("header", {}), "responses": responses[offset:offset + count]}
            if succeeded:
                own["succeeded"] = True
            item.result.set(own)
            offset += count
