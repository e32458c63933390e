"""Group commit for etcd v3: the transactions of concurrent writers sent as one transaction.

Under registration load many upserts are in flight at once, each one guarded transaction
(``compare`` / ``success`` / ``failure`` operations). :class:`TxnBatcher` sends the first
one at once and, while it is under way, queues the others; the next request carries every
queued transaction at once: their guards ANDed, their operations concatenated, so etcd
applies them atomically and each writer gets its slice of the responses. One HTTP round
trip then serves many writers, which is most of the CPU a write costs.

When the combined guard fails, each writer gets its own ``failure`` responses and does what
it does after a lost race (read, retry alone); a combined request that etcd refuses is
retried one transaction at a time, so one bad write never fails the others (an unreachable etcd
fails them all at once: retrying each alone would only multiply the wait). A batch never
holds two writes of the same key (etcd refuses duplicate keys in a transaction) and stays
under etcd's operation limit per transaction (``--max-txn-ops``, 128 by default). The
queueing and combining are :class:`kontrol.storage.coalesce.Coalescer`'s; this module says how
transactions combine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from .coalesce import Coalescer
from .errors import StorageError, StorageUnavailableError

#: Operations in one combined transaction at most (etcd's default limit is 128).
MAX_TXN_OPS = 120
#: Combined transactions under way at once: while one waits out an etcd without quorum (the storage
#: timeout), the next writer's still gets its own answer in time.
SENDERS = 2

Post = Callable[[str, dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class _Txn:
    compare: list[dict[str, Any]]
    success: list[dict[str, Any]]
    failure: list[dict[str, Any]]

    @property
    def size(self) -> int:
        return len(self.compare) + max(len(self.success), len(self.failure))

    @property
    def keys(self) -> frozenset[str]:
        """The (base64) keys its writes touch."""
        return frozenset(next(iter(op.values())).get("key", "") for op in self.success)


class TxnBatcher:
    """Sends transactions through ``post("/kv/txn", body)``, combining those that wait together."""

    def __init__(self, post: Post, max_ops: int = MAX_TXN_OPS):
        self._post = post
        self._calls: Coalescer[_Txn, dict[str, Any]] = Coalescer(
            self._send, max_size=max_ops, keys=lambda t: t.keys, size=lambda t: t.size, senders=SENDERS,
            alone=lambda error: isinstance(error, StorageError) and not isinstance(error, StorageUnavailableError))

    @property
    def requests(self) -> int:
        """Requests sent (for tests and benchmarks)."""
        return self._calls.round_trips

    @property
    def transactions(self) -> int:
        """Transactions they carried."""
        return self._calls.calls

    def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
            failure: list[dict[str, Any]]) -> dict[str, Any]:
        """Run one transaction (blocking); etcd's answer, its responses this transaction's own."""
        return self._calls(_Txn(compare, success, failure))

    def _send(self, batch: Sequence[_Txn]) -> list[dict[str, Any]]:
        body = {"compare": [c for t in batch for c in t.compare], "success": [s for t in batch for s in t.success],
                "failure": [f for t in batch for f in t.failure]}
        result = self._post("/kv/txn", body)
        succeeded = bool(result.get("succeeded"))
        responses = result.get("responses") or []
        answers: list[dict[str, Any]] = []
        offset = 0
        for t in batch:
            count = len(t.success if succeeded else t.failure)
            own: dict[str, Any] = {"header": result.get("header", {}), "responses": responses[offset:offset + count]}
            if succeeded:
                own["succeeded"] = True
            answers.append(own)
            offset += count
        return answers
