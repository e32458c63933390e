"""SQLite storage: the embedded default, one file, survives Kontrol restarts.

Concurrency: one ``sqlite3`` connection guarded by a lock (a gevent lock once the
process is monkey-patched). Each call is a short indexed statement or a small
transaction, so serialising them costs less than a pool would, and a single
connection can never exhaust anything. WAL journaling keeps readers in other
processes (a second Kontrol, ``sqlite3`` on the command line) from blocking us;
``synchronous=NORMAL`` is durable across process crashes, which is what a
registry of heartbeating kites needs. Calls into SQLite block the event loop for
their (sub-millisecond) duration.

Watches see only writes made through this process's storage objects on the file.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from kite.wire.protocol import PATH_FIELDS, KiteIdentity

from .base import (
    KeyPair,
    KiteRecord,
    KiteRef,
    check_kite,
    check_ttl,
    check_usable,
    kite_id,
    new_key_pair,
    newest_first,
    soft_deleted,
)
from .errors import KeyPairExistsError, KeyPairNotFoundError, StorageError, StorageUnavailableError
from .local import DEFAULT_PURGE_INTERVAL, LocalStorage, change_events

log = logging.getLogger(__name__)

#: How long a statement waits for another process's write lock before failing (ms).
#: Writes are tiny, so 5 s only runs out if the other process is stuck.
BUSY_TIMEOUT_MS = 5000
#: Bumped when the schema changes; stored in ``PRAGMA user_version``.
SCHEMA_VERSION = 1

_SCHEMA = (
    """
CREATE TABLE IF NOT EXISTS kites (
    id          TEXT PRIMARY KEY,
    username    TEXT NOT NULL,
    environment TEXT NOT NULL,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    region      TEXT NOT NULL,
    hostname    TEXT NOT NULL,
    url         TEXT NOT NULL,
    key_id      TEXT NOT NULL,
    created_at  REAL NOT NULL,
    updated_at  REAL NOT NULL,
    expires_at  REAL            -- Unix time, NULL: never expires
)""",
    "CREATE INDEX IF NOT EXISTS kites_path ON kites (username, environment, name, version, region, hostname)",
    "CREATE INDEX IF NOT EXISTS kites_expiry ON kites (expires_at) WHERE expires_at IS NOT NULL",
    """
CREATE TABLE IF NOT EXISTS key_pairs (
    id         TEXT PRIMARY KEY,
    public     TEXT NOT NULL UNIQUE,
    private    TEXT NOT NULL,
    created_at REAL NOT NULL,
    deleted_at REAL,
    CHECK (deleted_at IS NULL OR created_at <= deleted_at)
)""",
)

_KITE_COLUMNS = ", ".join(PATH_FIELDS) + ", url, key_id"
_LIVE = "(expires_at IS NULL OR expires_at > ?)"
_UPSERT = f"""
INSERT INTO kites (id, username, environment, name, version, region, hostname, url, key_id,
                   created_at, updated_at, expires_at)
VALUES (:id, :username, :environment, :name, :version, :region, :hostname, :url, :key_id, :now, :now, :expires_at)
ON CONFLICT (id) DO UPDATE SET
    {", ".join(f"{c} = excluded.{c}" for c in PATH_FIELDS if c != "id")},
    url = excluded.url, key_id = excluded.key_id,
    updated_at = excluded.updated_at, expires_at = excluded.expires_at
"""


def _unavailable(error: sqlite3.Error) -> bool:
    """Whether ``error`` is about the database being unreachable (busy, locked, I/O) rather than a bug."""
    name = getattr(error, "sqlite_errorname", "")  # Python >= 3.11
    if name:
        return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL"))
    text = str(error)
    return any(s in text for s in ("locked", "unable to open", "disk I/O", "database or disk is full"))


def _record(row: sqlite3.Row) -> KiteRecord:
    return KiteRecord(KiteIdentity(**{f: row[f] for f in PATH_FIELDS}), row["url"], row["key_id"])


def _key_pair(row: sqlite3.Row) -> KeyPair:
    return KeyPair(row["id"], row["public"], row["private"], row["created_at"], row["deleted_at"])


class SqliteStorage(LocalStorage):
    """Kites and key pairs in an SQLite file (or ``":memory:"``)."""

    def __init__(self, path: str, purge_interval: float = DEFAULT_PURGE_INTERVAL) -> None:
        self.path = path
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as e:
            raise StorageUnavailableError(f"cannot open sqlite database {path!r}: {e}") from e
        self._db.row_factory = sqlite3.Row
        self.closed = False
        try:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            if path != ":memory:":
                self._db.execute("PRAGMA journal_mode = WAL").fetchone()
            self._db.execute("PRAGMA synchronous = NORMAL")
            with self._tx(write=True):
                self._create_schema()
        except BaseException:
            self._db.close()
            raise
        super().__init__(purge_interval)

    def _create_schema(self) -> None:
        for statement in _SCHEMA:
            self._db.execute(statement)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise StorageError(f"{self.path}: schema version {version} is newer than this code ({SCHEMA_VERSION})")
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @contextmanager
    def _tx(self, write: bool = False) -> Iterator[sqlite3.Connection]:
        """Hold the lock; with ``write``, run the block as one IMMEDIATE transaction."""
        with self._lock:
            if self.closed:
                raise StorageError("storage is closed")
            try:
                if write:
                    self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    if write:
                        self._db.execute("ROLLBACK")
                    raise
                if write:
                    self._db.execute("COMMIT")
            except sqlite3.Error as e:
                if _unavailable(e):
                    raise StorageUnavailableError(f"sqlite: {e}") from e
                raise StorageError(f"sqlite: {e}") from e

    # -- kites --------------------------------------------------------------------------

    def _load(self, db: sqlite3.Connection, kid: str) -> tuple[KiteRecord | None, KiteRecord | None]:
        """(live record, expired record) stored under ``kid``; at most one is set."""
        row = db.execute(f"SELECT {_KITE_COLUMNS}, expires_at FROM kites WHERE id = ?", (kid,)).fetchone()
        if row is None:
            return None, None
        if row["expires_at"] is None or row["expires_at"] > time.time():
            return _record(row), None
        return None, _record(row)

    def _upsert_one(self, db: sqlite3.Connection, record: KiteRecord, ttl: float | None) -> list:
        old, expired = self._load(db, record.kite.id)
        now = time.time()
        db.execute(
            _UPSERT,
            {
                **record.kite.to_wire(),
                "url": record.url,
                "key_id": record.key_id,
                "now": now,
                "expires_at": None if ttl is None else now + ttl,
            },
        )
        return change_events(expired, None) + change_events(old, record)

    def upsert(self, kite: KiteIdentity, url: str, key_id: str = "", ttl: float | None = None) -> None:
        check_kite(kite, url)
        ttl = check_ttl(ttl)
        record = KiteRecord(KiteIdentity(**kite.to_wire()), url, key_id)
        with self._tx(write=True) as db:
            events = self._upsert_one(db, record, ttl)
        self._publish(events)

    def upsert_many(self, records: Iterable[KiteRecord], ttl: float | None = None) -> None:
        """All records in one transaction."""
        ttl = check_ttl(ttl)
        records = list(records)
        for r in records:
            check_kite(r.kite, r.url)
        events = []
        with self._tx(write=True) as db:
            for r in records:
                events += self._upsert_one(db, KiteRecord(KiteIdentity(**r.kite.to_wire()), r.url, r.key_id), ttl)
        self._publish(events)

    def refresh(self, kite: KiteRef, ttl: float | None) -> bool:
        ttl = check_ttl(ttl)
        kid = kite_id(kite)
        now = time.time()
        with self._tx(write=True) as db:
            cursor = db.execute(
                f"UPDATE kites SET expires_at = ?, updated_at = ? WHERE id = ? AND {_LIVE}",
                (None if ttl is None else now + ttl, now, kid, now),
            )
        return cursor.rowcount > 0

    def delete(self, kite: KiteRef) -> bool:
        kid = kite_id(kite)
        with self._tx(write=True) as db:
            old, expired = self._load(db, kid)
            db.execute("DELETE FROM kites WHERE id = ?", (kid,))
        self._publish(change_events(old or expired, None))
        return old is not None

    def _scan(self, prefix: tuple[str, ...]) -> Iterable[KiteRecord]:
        where = " AND ".join(f"{f} = ?" for f in PATH_FIELDS[: len(prefix)])
        with self._tx() as db:
            rows = db.execute(
                f"SELECT {_KITE_COLUMNS} FROM kites WHERE {where} AND {_LIVE}", (*prefix, time.time())
            ).fetchall()
        return [_record(row) for row in rows]

    def get_by_id(self, kite_id: str) -> KiteRecord | None:
        with self._tx() as db:
            return self._load(db, kite_id)[0]

    def count(self) -> int:
        with self._tx() as db:
            return db.execute(f"SELECT COUNT(*) FROM kites WHERE {_LIVE}", (time.time(),)).fetchone()[0]

    def _purge_expired(self) -> list[KiteRecord]:
        now = time.time()
        with self._tx(write=True) as db:
            rows = db.execute(
                f"SELECT {_KITE_COLUMNS} FROM kites WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).fetchall()
            db.execute("DELETE FROM kites WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,))
        return [_record(row) for row in rows]

    # -- key pairs ----------------------------------------------------------------------

    def add_key_pair(self, id: str, public: str, private: str) -> KeyPair:
        pair = new_key_pair(id, public, private)
        try:
            with self._tx(write=True) as db:
                db.execute(
                    "INSERT INTO key_pairs (id, public, private, created_at) VALUES (?, ?, ?, ?)",
                    (pair.id, pair.public, pair.private, pair.created_at),
                )
        except StorageError as e:
            if isinstance(e.__cause__, sqlite3.IntegrityError):
                raise KeyPairExistsError(f"key pair {pair.id} or its public key already exists") from None
            raise
        return pair

    def _find(self, column: str, value: str) -> KeyPair:
        with self._tx() as db:
            row = db.execute(f"SELECT * FROM key_pairs WHERE {column} = ?", (value,)).fetchone()
        if row is None:
            raise KeyPairNotFoundError()
        return _key_pair(row)

    def get_key_pair(self, id: str) -> KeyPair:
        return check_usable(self._find("id", id))

    def get_key_pair_by_public(self, public: str) -> KeyPair:
        return check_usable(self._find("public", public.strip()))

    def delete_key_pair(self, id: str) -> None:
        with self._tx(write=True) as db:
            row = db.execute("SELECT * FROM key_pairs WHERE id = ?", (id,)).fetchone()
            if row is None:
                raise KeyPairNotFoundError()
            pair = soft_deleted(_key_pair(row))
            db.execute("UPDATE key_pairs SET deleted_at = ? WHERE id = ?", (pair.deleted_at, id))

    def list_key_pairs(self, include_deleted: bool = False) -> list[KeyPair]:
        with self._tx() as db:
            rows = db.execute("SELECT * FROM key_pairs").fetchall()
        return newest_first((_key_pair(r) for r in rows), include_deleted)

    def _close(self) -> None:
        with self._lock:
            self._db.close()
