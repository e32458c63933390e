"""The JSON shapes of etcd's v3 HTTP gateway that :mod:`kontrol.storage.etcd` uses.

Keys and values travel base64-encoded; int64 fields come back as strings; enum and
boolean fields equal to their zero value (``PUT``, ``false``) are left out.
Transaction pieces (:func:`put`, :func:`delete`, :func:`absent`, :func:`unchanged`)
and the watch stream reader (:func:`follow_watch`, :func:`decode_watch_message`)
live here so the backend reads as storage logic.
"""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Iterator
from typing import Any

import requests

from .base import DEREGISTER, REGISTER, KiteEvent
from .errors import StorageError, StorageUnavailableError
from .etcd_common import kite_from_parts, parse_kite_value
from .watch import FeedGap

log = logging.getLogger(__name__)


def b64(data: str | bytes) -> str:
    """Base64 of ``data`` (text is UTF-8 encoded), as the gateway wants keys and values."""
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode("ascii")


def unb64(data: str) -> str:
    """Inverse of :func:`b64` for text."""
    return base64.b64decode(data).decode()


def range_end(prefix: str) -> str:
    """The (base64) end of the key range holding every key that starts with ``prefix``."""
    end = bytearray(prefix.encode())
    end[-1] += 1  # our prefixes end in "/", never 0xff
    return b64(bytes(end))


def put(key: str, value: str, lease: int) -> dict[str, Any]:
    """A transaction operation writing ``key`` (attached to ``lease`` unless it is 0)."""
    op: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        op["lease"] = lease
    return {"request_put": op}


def delete(key: str) -> dict[str, Any]:
    """A transaction operation deleting ``key``."""
    return {"request_delete_range": {"key": b64(key)}}


def absent(key: str) -> dict[str, Any]:
    """A transaction guard: ``key`` does not exist."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": 0}


def unchanged(key: str, mod_revision: int) -> dict[str, Any]:
    """A transaction guard: ``key`` was last modified at ``mod_revision``."""
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": mod_revision}


def follow_watch(
    session: requests.Session, url: str, prefix: str, start: int, timeout: tuple[float, float]
) -> Iterator[tuple[int, list[KiteEvent]]]:
    """Watch the kite keys under ``prefix`` from revision ``start``; owns and closes ``session``.

    Yields ``(next revision, events)`` per stream message; raises :class:`~kontrol.storage.watch.FeedGap`
    when etcd cancels the watch because of a compaction, and returns when the stream just ends.
    """
    create = {
        "key": b64(prefix),
        "range_end": range_end(prefix),
        "start_revision": start,
        "prev_kv": True,  # DELETE events then carry the url and key id
        "progress_notify": True,  # lets us advance while idle, and detect dead connections
    }
    response = None
    try:
        response = session.post(url, json={"create_request": create}, stream=True, timeout=timeout)
        if response.status_code != 200:
            raise StorageUnavailableError(f"watch: HTTP {response.status_code} {response.text[:200]}")
        buffered = b""
        for chunk in response.iter_content(chunk_size=None):
            buffered += chunk
            *lines, buffered = buffered.split(b"\n")
            for line in lines:
                item = decode_watch_message(json.loads(line), prefix) if line.strip() else None
                if item is None:
                    continue
                next_revision, events, compacted = item
                if compacted:
                    raise FeedGap(next_revision)
                yield next_revision, events
    finally:
        if response is not None:
            response.close()
        session.close()


def decode_watch_message(message: dict[str, Any], prefix: str) -> tuple[int, list[KiteEvent], bool] | None:
    """``(next revision, events, compacted)`` for one watch stream message; None when it says nothing."""
    if "error" in message:
        raise StorageError(f"watch: {message['error']}")
    result = message.get("result") or {}
    compact = int(result.get("compact_revision", 0))
    if compact:
        log.warning("etcd compacted past the watch position; resuming at %d, events before it are lost", compact)
        return compact, [], True
    if result.get("canceled"):
        raise StorageError(f"watch canceled: {result.get('cancel_reason', '')}")
    if result.get("created"):
        return None
    events = result.get("events") or []
    if not events:  # a progress notification: every event up to this revision was sent
        return int(result["header"]["revision"]) + 1, [], False
    decoded = [decode_event(e, prefix) for e in events]
    last = max(int(e["kv"].get("mod_revision", 0)) for e in events)
    return last + 1, [e for e in decoded if e is not None], False


def decode_event(event: dict[str, Any], prefix: str) -> KiteEvent | None:
    """The :class:`KiteEvent` for one etcd event on a kite key, or None if it changes nothing."""
    kv = event["kv"]
    kite = kite_from_parts(unb64(kv["key"])[len(prefix) :].split("/"))
    if kite is None:
        return None
    revision = int(kv.get("mod_revision", 0))
    prev = event.get("prev_kv")
    if event.get("type") == "DELETE":
        url, key_id = parse_kite_value(unb64(prev.get("value", "")) if prev else None)
        return KiteEvent(DEREGISTER, kite, url, key_id, revision)
    if prev is not None and prev.get("value") == kv.get("value"):
        return None  # the same registration moved to another lease: not a change
    url, key_id = parse_kite_value(unb64(kv.get("value", "")))
    return KiteEvent(REGISTER, kite, url, key_id, revision)
