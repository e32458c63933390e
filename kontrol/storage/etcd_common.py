"""Pieces both etcd backends use: connection limits, the kite value, key pair indexing."""

from __future__ import annotations

import hashlib
import json
import logging
import random
from typing import Any

import gevent
import requests
from requests.adapters import HTTPAdapter

from kite.wire.protocol import PATH_FIELDS, KiteIdentity

log = logging.getLogger(__name__)

#: Connections one storage instance may hold to etcd for ordinary requests. Requests
#: beyond this wait for a free connection instead of opening more: the Go Kontrol lost
#: kites when its database pool grew without bound under load. 10 in-flight requests
#: to one etcd is plenty for a registry whose writes are heartbeats.
DEFAULT_POOL_SIZE = 10
#: Seconds one etcd request may take before the backend reports it unavailable.
DEFAULT_TIMEOUT = 5.0
#: Read timeout of a watch connection. The v3 stream asks for progress notifications,
#: which etcd sends every 10 minutes by default; silence well beyond that means a dead
#: connection, so we reconnect.
WATCH_READ_TIMEOUT = 15 * 60.0
#: Upper bound of the random pause before retrying a transaction that lost a race, per
#: attempt so far. Random pauses spread out writers that keep colliding on one key.
CONTENTION_PAUSE = 0.01


def contention_pause(attempt: int) -> None:
    """Sleep a little (randomly, longer with each ``attempt``) before retrying a lost race."""
    if attempt:
        gevent.sleep(random.uniform(0, CONTENTION_PAUSE * attempt))


def bounded_session(pool_size: int, verify: Any = True, cert: Any = None) -> requests.Session:
    """A requests session that never holds more than ``pool_size`` connections (it blocks instead)."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=1, pool_maxsize=pool_size, pool_block=True)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.verify = verify
    session.cert = cert
    # etcd is addressed directly: skip requests' per-call scan of the proxy variables
    # (~10 % of Kontrol's CPU under registration load).
    session.trust_env = False
    return session


def kite_value(url: str, key_id: str) -> str:
    """The value stored under a kite's path key: the Go Kontrol's JSON (same keys, order, no spaces)."""
    return json.dumps({"url": url, "key_id": key_id}, separators=(",", ":"))


def parse_kite_value(value: str | bytes | None) -> tuple[str, str]:
    """``(url, key_id)`` from a stored value; empty strings when it is missing or garbled."""
    try:
        obj = json.loads(value) if value else {}
    except ValueError:
        obj = {}
    if not isinstance(obj, dict):
        obj = {}
    url, key_id = obj.get("url", ""), obj.get("key_id", "")
    return (url if isinstance(url, str) else "", key_id if isinstance(key_id, str) else "")


def kite_from_parts(parts: list[str]) -> KiteIdentity | None:
    """A kite from the seven path segments of a key, or None when it is not a kite key."""
    if len(parts) != len(PATH_FIELDS) or not all(parts):
        return None
    return KiteIdentity(**dict(zip(PATH_FIELDS, parts, strict=True)))


def public_key_digest(public: str) -> str:
    """The key under which a public PEM is indexed (PEMs are too long and contain '/')."""
    return hashlib.sha256(public.encode()).hexdigest()
