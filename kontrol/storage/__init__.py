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
    "PostgresStorage",
    "SqliteStorage",
    "Storage",
    "StorageError",
    "StorageUnavailableError",
    "Watcher",
    "etcd_members",
    "get_audience",
    "open_storage",
]

#: etcd's standard client port, used when an etcd URL names none.
ETCD_DEFAULT_PORT = 2379
#: What names the PostgreSQL backend: a URL of these schemes, or the bare name.
POSTGRES_SCHEMES = ("postgres", "postgresql")


def __getattr__(name: str) -> Any:
    # The etcd and postgres backends import their client libraries only when asked for.
    if name == "PostgresStorage":
        from .postgres import PostgresStorage

        return PostgresStorage
    if name == "EtcdStorage":
        from .etcd import EtcdStorage

        return EtcdStorage
    if name == "Etcd2Storage":
        from .etcd2 import Etcd2Storage

        return Etcd2Storage
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def etcd_members(netloc: str) -> list[tuple[str, int]]:
    """``(host, port)`` of each comma-separated member of an etcd URL's ``host:port,host:port``
    (a missing host is 127.0.0.1, a missing port :data:`ETCD_DEFAULT_PORT`)."""
    members = []
    for member in netloc.split(","):
        parts = urlsplit(f"//{member.strip()}")
        try:
            port = parts.port
        except ValueError:
            raise ValueError(f"etcd member {member!r}: not host:port") from None
        members.append((parts.hostname or "127.0.0.1", port or ETCD_DEFAULT_PORT))
    return members


def open_storage(url_or_name: str, **options: Any) -> Storage:
    """Open a backend from a name or URL; ``options`` go to the backend's constructor.

    * ``"memory"``: :class:`MemoryStorage`;
    * ``"sqlite:///relative.db"``, ``"sqlite:////absolute.db"`` (SQLAlchemy's
      convention), ``"sqlite://"`` (in memory), or a plain file path:
      :class:`SqliteStorage`;
    * ``"etcd://host:port[/prefix]"``: :class:`~kontrol.storage.etcd.EtcdStorage` (v3 API); a
      cluster as ``"etcd://host1:port1,host2:port2,host3:port3[/prefix]"`` (requests fail over from
      one member to the next);
    * ``"etcd2://host:port[/prefix]"``: :class:`~kontrol.storage.etcd2.Etcd2Storage` (v2
      API, the Go Kontrol's layout);
    * ``"postgres://user:password@host:port/dbname"`` (or ``postgresql://``):
      :class:`~kontrol.storage.postgres.PostgresStorage`, in the Go Kontrol's tables. A
      bare ``"postgres"`` or ``"postgres://"`` is configured as the Go Kontrol is, by
      ``KONTROL_POSTGRES_HOST`` (default localhost), ``KONTROL_POSTGRES_PORT`` (5432),
      ``KONTROL_POSTGRES_USERNAME`` and ``KONTROL_POSTGRES_DBNAME`` (both required),
      ``KONTROL_POSTGRES_PASSWORD`` and ``KONTROL_POSTGRES_CONNECTTIMEOUT`` (seconds,
      default 20); these also fill in what a URL leaves out. Options: ``pool_size``
      (10), ``pool_timeout``, ``timeout``, ``purge_interval``, ``ssl_context``.
    """
    if url_or_name in ("memory", "memory://"):
        return MemoryStorage(**options)
    if url_or_name.split("://", 1)[0] in POSTGRES_SCHEMES:  # "postgres", "postgres://…", "postgresql…"
        from .postgres import PostgresStorage

        return PostgresStorage.from_url(url_or_name, **options)
    if "://" not in url_or_name:
        return SqliteStorage(url_or_name, **options)
    scheme, rest = url_or_name.split("://", 1)
    if scheme == "sqlite":
        path = rest[1:] if rest.startswith("/") else rest
        return SqliteStorage(path or ":memory:", **options)
    if scheme in ("etcd", "etcd2"):
        parts = urlsplit(url_or_name)
        members = etcd_members(parts.netloc)
        where: dict[str, Any] = {"host": members[0][0], "port": members[0][1]}
        if len(members) > 1:
            where["failover"] = members[1:]
        if parts.path not in ("", "/"):
            where["prefix"] = parts.path
        if scheme == "etcd":
            from .etcd import EtcdStorage

            return EtcdStorage(**where, **options)
        from .etcd2 import Etcd2Storage

        return Etcd2Storage(**where, **options)
    raise ValueError(
        f"unknown storage {url_or_name!r}: use memory, sqlite:///file.db, etcd://host:port, etcd2://… or postgres://…"
    )
