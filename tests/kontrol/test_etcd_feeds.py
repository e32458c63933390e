"""Change-feed decoding and recovery paths that a healthy etcd rarely shows (no server needed)."""

from __future__ import annotations

import etcd
import gevent
import pytest

from kontrol.storage import DEREGISTER, REGISTER, KiteEvent, StorageError
from kontrol.storage.etcd2 import Etcd2Storage
from kontrol.storage.etcd2http import Etcd2Node
from kontrol.storage.etcd3_wire import b64, decode_watch_message
from kontrol.storage.watch import EventPump

PREFIX = "/p/kites/"
KEY = PREFIX + "alice/production/math/1.0.0/eu-west/worker-1/id-1"
VALUE = '{"url":"http://a/kite","key_id":"k1"}'


def kv(key: str, value: str | None, mod_revision: int) -> dict:
    out = {"key": b64(key), "mod_revision": str(mod_revision)}
    if value is not None:
        out["value"] = b64(value)
    return out


def test_v3_created_and_progress_messages() -> None:
    assert decode_watch_message({"result": {"header": {"revision": "7"}, "created": True}}, PREFIX) is None
    assert decode_watch_message({"result": {"header": {"revision": "9"}}}, PREFIX) == (10, [], False)


def test_v3_events() -> None:
    put = {"kv": kv(KEY, VALUE, 11)}
    same_value_moved_lease = {"kv": kv(KEY, VALUE, 12), "prev_kv": kv(KEY, VALUE, 11)}
    deleted = {"type": "DELETE", "kv": kv(KEY, None, 13), "prev_kv": kv(KEY, VALUE, 12)}
    id_index = {"kv": kv("/p/kites/../kite-ids/id-1", "{}", 13)}
    message = {"result": {"header": {"revision": "13"}, "events": [put, same_value_moved_lease, deleted, id_index]}}
    next_revision, events, compacted = decode_watch_message(message, PREFIX)
    assert (next_revision, compacted) == (14, False)
    assert [(e.action, e.kite.id, e.url, e.key_id, e.revision) for e in events] == [
        (REGISTER, "id-1", "http://a/kite", "k1", 11),
        (DEREGISTER, "id-1", "http://a/kite", "k1", 13),
    ]


def test_v3_compaction_and_errors() -> None:
    compacted = {"result": {"header": {"revision": "50"}, "compact_revision": "40", "canceled": True}}
    assert decode_watch_message(compacted, PREFIX) == (40, [], True)
    with pytest.raises(StorageError, match="watch canceled: gone"):
        decode_watch_message({"result": {"canceled": True, "cancel_reason": "gone"}}, PREFIX)
    with pytest.raises(StorageError, match="watch: boom"):
        decode_watch_message({"error": "boom"}, PREFIX)


class FakeWatchClient:
    """Replays scripted results (or exceptions) for ``watch`` calls and records the indexes asked for."""

    def __init__(self, script: list) -> None:
        self.script = script
        self.indexes: list[int] = []

    def watch(self, key, index=None, timeout=None, recursive=None):
        self.indexes.append(index)
        if not self.script:
            gevent.sleep(3600)
        item = self.script.pop(0)
        if isinstance(item, Exception):
            raise item
        return item


def v2_result(action: str, index: int, value: str | None = VALUE, prev: str | None = None) -> Etcd2Node:
    node = {"key": "/kites/alice/production/math/1.0.0/eu-west/worker-1/id-1", "modifiedIndex": index}
    if value is not None:
        node["value"] = value
    return Etcd2Node(action, node, {"key": node["key"], "value": prev} if prev else None)


def test_v2_feed_resumes_after_timeouts_cleared_history_and_errors() -> None:
    storage = Etcd2Storage(port=1)
    fake = FakeWatchClient(
        [
            etcd.EtcdWatchTimedOut("idle"),
            v2_result("set", 5),
            v2_result("set", 6, prev=VALUE),  # same value again: not an event
            etcd.EtcdEventIndexCleared("cleared", {"index": 100}),
            v2_result("expire", 101, value=None, prev=VALUE),
            etcd.EtcdConnectionFailed("etcd went away"),
            v2_result("delete", 102, value=None, prev=VALUE),
        ]
    )
    real, storage._watch_client = storage._watch_client, fake
    events: list[KiteEvent] = []
    pump = EventPump("test", storage._follow, 5, events.append)
    try:
        with gevent.Timeout(5):
            while len(events) < 3:
                gevent.sleep(0.01)
    finally:
        pump.stop()
        storage._watch_client = real
        storage.close()
    assert [(e.action, e.revision) for e in events] == [(REGISTER, 5), (DEREGISTER, 101), (DEREGISTER, 102)]
    # resumed at the same index after a timeout, past the cleared history, and after the error
    assert fake.indexes[:7] == [5, 5, 6, 7, 101, 102, 102]
