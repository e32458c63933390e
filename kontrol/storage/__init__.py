"""Kontrol's storage: registered kites (with TTLs and watches) and key pairs.

Pick a backend with :func:`open_storage`; every backend implements :class:`Storage`
with the same semantics (see :mod:`kontrol.storage.base` and
:mod:`kontrol.storage.query`).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from .base import (
    DEREGISTER,
    REGISTER,
    KeyPair,
    KiteEvent,
    KiteRecord,
    Storage,
    Watcher,
)
from .errors import (
    InvalidKiteError,
    InvalidQueryError,
    KeyPairDeletedError,
    KeyPairError,
    KeyPairExistsError,
    KeyPairNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from .memory import MemoryStorage
from .query import KontrolQuery, get_audience
from .sqlite import SqliteStorage

__all__ = [
    "DEREGISTER",
    "REGISTER",
    "Etcd2Storage",
    "EtcdStorage",
    "InvalidKiteError",
    "InvalidQueryError",
    "KeyPair",
    "KeyPairDeletedError",
    "KeyPairError",
    "KeyPairExistsError",
    "KeyPairNotFoundError",
    "KiteEvent",
    "KiteRecord",
    "KontrolQuery",
    "MemoryStorage",
    "SqliteStorage",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "Watcher",
    "get_audience",
    "open_storage",
]

#: etcd's standard client port, used when an etcd URL names none.
ETCD_DEFAULT_PORT = 2379


def __getattr__(name: str) -> Any:
    # The etcd backends import their client libraries only when asked for.
    if name == "EtcdStorage":
        from .etcd import EtcdStorage

        return EtcdStorage
    if name == "Etcd2Storage":
        from .etcd2 import Etcd2Storage

        return Etcd2Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def open_storage(url_or_name: str, **options: Any) -> Storage:
    """Open a backend from a name or URL; ``options`` go to the backend's constructor.

    * ``"memory"``: :class:`MemoryStorage`;
    * ``"sqlite:///relative.db"``, ``"sqlite:////absolute.db"`` (SQLAlchemy's
      convention), ``"sqlite://"`` (in memory), or a plain file path:
      :class:`SqliteStorage`;
    * ``"etcd://host:port[/prefix]"``: :class:`~kontrol.storage.etcd.EtcdStorage` (v3 API);
    * ``"etcd2://host:port[/prefix]"``: :class:`~kontrol.storage.etcd2.Etcd2Storage` (v2
      API, the Go Kontrol's layout).
    """
    if url_or_name in ("memory", "memory://"):
        return MemoryStorage(**options)
    if "://" not in url_or_name:
        return SqliteStorage(url_or_name, **options)
    scheme, rest = url_or_name.split("://", 1)
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        return SqliteStorage(path or ":memory:", **options)
    if scheme in ("etcd", "etcd2"):
        parts = urlsplit(url_or_name)
        where = {"host": parts.hostname or "127.0.0.1", "port": parts.port or ETCD_DEFAULT_PORT}
        if parts.path not in ("", "/"):
            where["prefix"] = parts.path
        if scheme == "etcd":
            from .etcd import EtcdStorage

            return EtcdStorage(**where, **options)
        from .etcd2 import Etcd2Storage

        return Etcd2Storage(**where, **options)
    raise ValueError(f"unknown storage {url_or_name!r}: use memory, sqlite:///file.db, etcd://host:port or etcd2://…")
