"""PostgreSQL storage in the Go Kontrol's tables, so that a Go Kontrol and this one can share a database.

**Layout** (PROTOCOL.md §7.11): schema ``kite`` with

* ``kite.key``: ``id uuid`` (primary key), ``public``/``private text`` (each unique),
  ``created_at``, ``deleted_at timestamptz`` (check ``created_at <= deleted_at``),
  indexed on ``public`` and on ``(deleted_at DESC NULLS FIRST, public)``;
* ``kite.kite`` (UNLOGGED): ``username, environment, kitename, version, region,
  hostname``, ``id uuid`` (primary key), ``url``, ``created_at``, ``updated_at``,
  ``key_id uuid NOT NULL`` referencing ``kite.key(id)``, indexed on ``updated_at DESC``.

The storage creates whatever is missing (``IF NOT EXISTS``, in one transaction under an
advisory lock, so Kontrols starting together do not race); tables made by the Go
setup scripts are used as they are. Roles and grants are the administrator's business.
The table is UNLOGGED, as in Go: a server *crash* empties it (key pairs survive), and
Kontrol's registry writes its live kites back at their next refresh.

**Ids**: the Go columns are ``uuid``, so kite ids, key pair ids and the ``key_id`` of a
kite must be canonical (lower-case, hyphenated) UUIDs, and a kite's ``key_id`` must name
a stored key pair (the foreign key; the Go Kontrol refuses an empty one too). Anything
else is refused with :class:`InvalidKiteError` (kites) or :class:`KeyPairError` (key
pairs); looking up an id that is not a UUID just finds nothing. Kontrol itself only
uses UUIDs: kites generate them, and it registers kites under its stored pairs.

**TTLs**: the Go Kontrol has one TTL for all kites, 90 s after ``updated_at`` (its
cleaner deletes older rows). We keep that rule and express each kite's own TTL through
``updated_at``: a kite written with TTL ``t`` gets ``updated_at = now + t - 90 s``, so it
expires after ``t`` seconds for us and for a Go Kontrol's cleaner alike; with Kontrol's
default TTL of 90 s, ``updated_at`` is simply the time of the write, as in Go. A kite
without TTL gets ``updated_at = 9999-12-31``. Times are the database server's clock
(one clock for every Kontrol sharing it), computed as Go does, ``now() AT TIME ZONE
'UTC'``. Reads never return expired rows; every ``purge_interval`` seconds each storage
deletes them and announces them (``DEREGISTER``).

**Atomicity**: an upsert is atomic, as in Go: a new kite is one statement (``INSERT ... ON
CONFLICT DO NOTHING`` and the ``NOTIFY`` of its ``REGISTER``); one that has a row is one
transaction, ``UPDATE`` by id (returning the row it replaced), then ``INSERT`` if the row was
deleted meanwhile. Deletes and purges are transactions too, and their watch notifications
commit with them.

**Group commit**: upserts, refreshes and lookups by id that callers make at the same time
share statements (:mod:`kontrol.storage.coalesce`): while one is under way the others queue,
and the next carries them all (up to :data:`BATCH_SIZE`), the rows as one JSON parameter. The
upserts of a batch are one statement for the new kites (a batch of registrations: one round
trip), then one transaction for those that exist (rows locked and kites inserted in id order,
so that Kontrols writing the same kites do not deadlock). A batch the server refuses (one kite's
``key_id`` names no key pair, say) is retried one kite at a time, so only the bad write fails.
Under load this turns five pg8000 round trips per kite -- a few hundred microseconds of Python
each -- into one or a few per batch.

**Watches**: every change made through this backend, by any process, is published with
``NOTIFY kontrol_kites`` in the transaction that makes it (PostgreSQL delivers
notifications in commit order). Each storage instance that has watchers holds one more
connection that ``LISTEN``\\s; events usually arrive within milliseconds, and at the
latest after :data:`LISTEN_POLL_INTERVAL`. Changes made while that connection is down
(the server restarting) are not delivered; it reconnects with a backoff. Writes by a Go
Kontrol are not announced (it has no watches, §7.9), but its rows are read and expire
like ours.

**Connections**: at most ``pool_size`` connections for ordinary calls (plus the
listener). Callers wait for a free one up to ``pool_timeout`` seconds instead of opening
more (the Go Kontrol's unbounded pool hit ``max_connections`` under load and lost
kites). A broken connection is dropped and replaced; an operation that fails on a
reused connection before the server did anything is retried once on a fresh one.
Unreachable servers, timeouts and other transient failures raise
:class:`StorageUnavailableError`, so Kontrol retries as it does on etcd outages.

**Driver**: ``pg8000`` (pure Python). It talks through the ``socket`` module, so in a
monkey-patched (gevent) process every call blocks only its greenlet.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import uuid
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import gevent
import orjson
import pg8000.native
from gevent.lock import BoundedSemaphore, Semaphore
from gevent.socket import wait_read
from pg8000.exceptions import DatabaseError, InterfaceError

from kite.wire.protocol import PATH_FIELDS, KiteIdentity

from .base import (
    KeyPair,
    KiteEvent,
    KiteRecord,
    KiteRef,
    QueryLike,
    Storage,
    WatchCallback,
    Watcher,
    check_kite,
    check_ttl,
    check_usable,
    kite_id,
    new_key_pair,
    newest_first,
)
from .coalesce import Coalescer
from .errors import (
    InvalidKiteError,
    KeyPairError,
    KeyPairExistsError,
    KeyPairNotFoundError,
    StorageError,
    StorageUnavailableError,
)
from .local import DEFAULT_PURGE_INTERVAL, change_events, purge_forever
from .query import KontrolQuery
from .watch import EventPump, WatchHub

log = logging.getLogger("kontrol.storage.postgres")

T = TypeVar("T")

DEFAULT_PORT = 5432
#: Connections one storage instance holds for ordinary calls (callers beyond wait).
DEFAULT_POOL_SIZE = 10
#: Seconds a caller waits for a free connection before the storage is "unavailable".
DEFAULT_POOL_TIMEOUT = 10.0
#: Seconds one operation (a statement or a transaction) may take on the server.
DEFAULT_TIMEOUT = 5.0
#: Seconds to open a connection (Go's ``KONTROL_POSTGRES_CONNECTTIMEOUT`` default).
DEFAULT_CONNECT_TIMEOUT = 20.0
#: The Go Kontrol's ``KeyTTL``: a row whose ``updated_at`` is older than this has expired.
GO_KEY_TTL = 90
#: ``updated_at`` of a kite that never expires (finite: Go's driver cannot read 'infinity').
PERMANENT = "9999-12-31 00:00:00"
#: The channel the watch notifications go through.
CHANNEL = "kontrol_kites"
#: Largest notification payload we send (PostgreSQL refuses 8000 bytes and more).
MAX_PAYLOAD = 7900
#: Longest wait of the listener between round trips: bounds how late a notification
#: that arrived with another message can be read, and how soon a dead connection is seen.
LISTEN_POLL_INTERVAL = 0.5
#: Kites one statement writes, refreshes or looks up at most (concurrent calls share statements).
BATCH_SIZE = 200
#: Attempts of an upsert that keeps losing the race between its UPDATE and INSERT.
UPSERT_ATTEMPTS = 5
#: Key of the advisory lock held while creating the schema (any constant; "kontrol").
SCHEMA_LOCK = 0x6B6F6E74726F6C
#: SQLSTATE codes (and classes) that mean "try again later", not "your request is wrong".
_TRANSIENT_CODES = ("40001", "40P01", "55P03")
_TRANSIENT_CLASSES = ("08", "53", "57")
#: The application_name of our connections, and of the listener (what pg_stat_activity shows).
APPLICATION_NAME = "kontrol"
LISTENER_NAME = "kontrol-watch"

# -- SQL ------------------------------------------------------------------------------------
# The Go Kontrol's times: now() in UTC, as a timestamp that the column's timestamptz
# reads in the session time zone. Used for kites only, exactly as Go does.
_NOW = "(now() AT TIME ZONE 'UTC')"
_LIVE = f"updated_at > {_NOW} - interval '{GO_KEY_TTL} seconds'"
#: Our field names -> the Go columns (``name`` is ``kitename`` there).
_COLUMN = {f: ("kitename" if f == "name" else f) for f in PATH_FIELDS}
_KITE_COLUMNS = ", ".join(_COLUMN[f] for f in PATH_FIELDS) + ", url, key_id"

_SCHEMA_OBJECTS = (
    "kite.key",
    "kite.kite_key_public_idx",
    "kite.kite_key_deleted_at_public_idx",
    "kite.kite",
    "kite.kite_updated_at_btree_idx",
)
_MISSING_OBJECTS = "SELECT name FROM unnest(CAST(:names AS text[])) AS name WHERE to_regclass(name) IS NULL"
_SCHEMA = f"""
CREATE SCHEMA IF NOT EXISTS kite;
CREATE TABLE IF NOT EXISTS kite.key (
    id          uuid           NOT NULL DEFAULT gen_random_uuid(),
    public      text           NOT NULL,
    private     text           NOT NULL,
    created_at  timestamptz(6) NOT NULL DEFAULT now(),
    deleted_at  timestamptz(6),
    PRIMARY KEY (id),
    CONSTRAINT key_public_unique UNIQUE (public),
    CONSTRAINT key_private_unique UNIQUE (private),
    CONSTRAINT key_created_at_lte_deleted_at_check CHECK (created_at <= deleted_at)
);
CREATE INDEX IF NOT EXISTS kite_key_public_idx ON kite.key USING btree (public);
CREATE INDEX IF NOT EXISTS kite_key_deleted_at_public_idx ON kite.key USING btree (deleted_at DESC NULLS FIRST, public);
CREATE UNLOGGED TABLE IF NOT EXISTS kite.kite (
    username    text        NOT NULL,
    environment text        NOT NULL,
    kitename    text        NOT NULL,
    version     text        NOT NULL,
    region      text        NOT NULL,
    hostname    text        NOT NULL,
    id          uuid        PRIMARY KEY,
    url         text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT {_NOW},
    updated_at  timestamptz NOT NULL DEFAULT {_NOW},
    key_id      uuid        NOT NULL,
    CONSTRAINT kite_key_id_fkey FOREIGN KEY (key_id) REFERENCES kite.key (id)
);
CREATE INDEX IF NOT EXISTS kite_updated_at_btree_idx ON kite.kite USING btree (updated_at DESC);
"""

# Kites are written, refreshed and looked up many at a time (:mod:`kontrol.storage.coalesce`).
# A statement takes its rows as ONE JSON parameter (``:rows``, a list of objects keyed by column;
# missing keys are NULL) and returns kite rows as ONE JSON text (a list of arrays): pg8000 encodes
# array parameters and decodes result rows value by value in Python -- a fifth of Kontrol's CPU per
# registration -- while orjson and PostgreSQL's JSON functions are C. Lists of ids are ``:ids``,
# comma-separated (ids are checked UUIDs).
_NEW_COLUMNS = (*(_COLUMN[f] for f in PATH_FIELDS), "url", "key_id", "ttl")
_ROW_TYPES = {**{c: "text" for c in _NEW_COLUMNS}, "id": "uuid", "key_id": "uuid", "ttl": "float8",
              # a new kite's REGISTER event (encoded), the NOTIFY payload it goes in (-1: none), its rank
              "event": "text", "chunk": "int4", "ord": "int4"}
_ROWS = "json_to_recordset(CAST(:rows AS json)) AS n({})".format(", ".join(f"{c} {t}" for c, t in _ROW_TYPES.items()))
_IDS = "CAST(string_to_array(:ids, ',') AS uuid[])"
#: When a row written with TTL ``n.ttl`` (NULL: none) expires, in the Go Kontrol's terms (see the module docstring).
_EXPIRES = f"COALESCE({_NOW} + (n.ttl - {GO_KEY_TTL}) * interval '1 second', timestamp '{PERMANENT}')"
_OLD_COLUMNS = ", ".join(f"old.{c.strip()}" for c in _KITE_COLUMNS.split(","))


def _as_json(columns: str, source: str) -> str:
    """SELECT the rows of ``source`` as one JSON text: a list of ``[columns...]`` (``[]`` for none)."""
    return f"SELECT COALESCE(CAST(json_agg(json_build_array({columns})) AS text), '[]') FROM {source}"


def _insert_sql(rows: str) -> str:
    """INSERT the kites of ``rows`` (aliased ``n``) that have no row; RETURNING their ids."""
    return f"""
INSERT INTO kite.kite ({_KITE_COLUMNS}, updated_at)
SELECT {", ".join(f"n.{c}" for c in _NEW_COLUMNS[:-1])}, {_EXPIRES} FROM {rows}
ON CONFLICT (id) DO NOTHING
RETURNING id
"""


# The UPDATE of Go's upsert, also setting the identity (ours may change under one id), and
# returning the rows it replaced (with whether each was still live) for the watchers. Rows are
# locked in id order, so that two Kontrols writing the same kites cannot deadlock.
_UPDATE_KITES = f"""
WITH replaced AS (
UPDATE kite.kite AS k SET {", ".join(f"{c} = n.{c}" for c in _NEW_COLUMNS[:6])}, url = n.url, key_id = n.key_id,
    updated_at = {_EXPIRES}
FROM (SELECT {_KITE_COLUMNS}, {_LIVE} AS live FROM kite.kite WHERE id = ANY({_IDS}) ORDER BY id
      FOR UPDATE) AS old, {_ROWS}
WHERE k.id = old.id AND n.id = old.id
RETURNING {_OLD_COLUMNS}, old.live)
{_as_json(_KITE_COLUMNS + ", live", "replaced")}
"""
_INSERT_KITES = _insert_sql(_ROWS)
# New kites in one statement, outside a transaction (a statement is atomic): the INSERT and the
# NOTIFY of each inserted kite's REGISTER (events encoded by the caller), so that a batch of
# registrations is one round trip. Returns the ids inserted (comma-separated, a row per payload);
# the others exist already and take the UPDATE path.
_INSERT_NEW_KITES = f"""
WITH n AS MATERIALIZED (SELECT * FROM {_ROWS}), inserted AS ({_insert_sql("n")})
SELECT string_agg(CAST(n.id AS text), ','),
       CASE WHEN n.chunk >= 0
            THEN pg_notify('{CHANNEL}', '[' || string_agg(n.event, ',' ORDER BY n.ord) || ']') END
FROM inserted JOIN n USING (id)
GROUP BY n.chunk
"""
_REFRESH_KITES = f"""
WITH refreshed AS (
UPDATE kite.kite AS k SET updated_at = {_EXPIRES}
FROM {_ROWS}
WHERE k.id = n.id AND k.{_LIVE}
RETURNING k.id)
SELECT string_agg(CAST(id AS text), ',') FROM refreshed
"""
_GET_KITES = _as_json(_KITE_COLUMNS, f"kite.kite WHERE id = ANY({_IDS}) AND {_LIVE}")
_DELETE_KITE = f"""
WITH deleted AS (DELETE FROM kite.kite WHERE id = :id RETURNING {_KITE_COLUMNS}, {_LIVE} AS live)
{_as_json(_KITE_COLUMNS + ", live", "deleted")}
"""
_COUNT_KITES = f"SELECT count(*) FROM kite.kite WHERE {_LIVE}"
_PURGE_KITES = f"""
WITH purged AS (DELETE FROM kite.kite WHERE NOT ({_LIVE}) RETURNING {_KITE_COLUMNS})
{_as_json(_KITE_COLUMNS, "purged")}
"""
_NOTIFY = f"SELECT pg_notify('{CHANNEL}', payload) FROM json_array_elements_text(CAST(:payloads AS json)) AS payload"

_EPOCH = "CAST(EXTRACT(epoch FROM {}) AS float8)"
_KEY_COLUMNS = f"id, public, private, {_EPOCH.format('created_at')}, {_EPOCH.format('deleted_at')}"
_INSERT_KEY = f"INSERT INTO kite.key (id, public, private) VALUES (:id, :public, :private) RETURNING {_KEY_COLUMNS}"
# A soft delete; an already deleted pair keeps its first deletion time.
_DELETE_KEY = (
    "UPDATE kite.key SET deleted_at = COALESCE(deleted_at, GREATEST(now(), created_at)) WHERE id = :id RETURNING id"
)
_KEY_BY_ID = f"SELECT {_KEY_COLUMNS} FROM kite.key WHERE id = :id"
_KEY_BY_PUBLIC = f"SELECT {_KEY_COLUMNS} FROM kite.key WHERE public = :public"
_ALL_KEYS = f"SELECT {_KEY_COLUMNS} FROM kite.key"


def _scan_sql(length: int) -> str:
    where = " AND ".join(f"{_COLUMN[f]} = :{f}" for f in PATH_FIELDS[:length])
    return _as_json(_KITE_COLUMNS, f"kite.kite WHERE {where} AND {_LIVE}")


_SCANS = {n: _scan_sql(n) for n in range(1, len(PATH_FIELDS) + 1)}


# -- settings -------------------------------------------------------------------------------


@dataclass(frozen=True)
class PostgresSettings:
    """Where and as whom to connect (the Go ``PostgresConfig``; ``sslmode=disable`` as there)."""

    user: str
    database: str
    host: str = "localhost"
    port: int = DEFAULT_PORT
    password: str | None = field(default=None, repr=False)
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @classmethod
    def from_url(cls, url: str, environ: Mapping[str, str] | None = None) -> PostgresSettings:
        """Settings from ``postgres[ql]://user:password@host:port/dbname`` or a bare ``postgres[ql][://]``.

        Each setting comes from the URL, else from ``KONTROL_POSTGRES_<NAME>`` (``HOST``,
        ``PORT``, ``USERNAME``, ``PASSWORD``, ``DBNAME``, ``CONNECTTIMEOUT``), else its
        default (localhost, 5432, no password, 20 s); user and database name are required.
        Raises ``ValueError`` for a missing or malformed setting.
        """
        env = os.environ if environ is None else environ
        parts = urlsplit(url if "://" in url else url + "://")
        if parts.scheme not in ("postgres", "postgresql"):
            raise ValueError(f"not a postgres URL: {url!r}")
        if parts.query not in ("", "sslmode=disable"):  # TLS is the ssl_context option, not silently dropped
            raise ValueError(f"postgres URL parameters are not supported: {parts.query!r}")

        def setting(from_url: str | None, name: str) -> str | None:
            return unquote(from_url) if from_url else env.get(f"KONTROL_POSTGRES_{name}") or None

        user = setting(parts.username, "USERNAME")
        database = setting(parts.path.lstrip("/"), "DBNAME")
        for value, name in ((user, "USERNAME"), (database, "DBNAME")):
            if not value:
                raise ValueError(f"postgres storage: no {name.lower()}: give it in the URL or KONTROL_POSTGRES_{name}")
        assert user is not None and database is not None
        return cls(
            user=user,
            database=database,
            host=setting(parts.hostname, "HOST") or "localhost",
            port=_number(parts.port or env.get("KONTROL_POSTGRES_PORT") or DEFAULT_PORT, "PORT", int),
            password=setting(parts.password, "PASSWORD"),
            connect_timeout=_number(
                env.get("KONTROL_POSTGRES_CONNECTTIMEOUT") or DEFAULT_CONNECT_TIMEOUT, "CONNECTTIMEOUT", float
            ),
        )

    def __str__(self) -> str:
        """``postgres://user@host:port/db``: the address without the password (for logs)."""
        return f"postgres://{self.user}@{self.host}:{self.port}/{self.database}"


def _number(value: Any, name: str, kind: Callable[[Any], T]) -> T:
    try:
        return kind(value)
    except ValueError:
        raise ValueError(f"KONTROL_POSTGRES_{name}: not a number: {value!r}") from None


# -- ids ------------------------------------------------------------------------------------


def is_uuid(value: str) -> bool:
    """Whether ``value`` is a UUID in the canonical form PostgreSQL returns (lower case, hyphens)."""
    try:
        return str(uuid.UUID(value)) == value
    except (ValueError, TypeError, AttributeError):
        return False


def _check_ids(record: KiteRecord) -> None:
    if not is_uuid(record.kite.id):
        raise InvalidKiteError(
            f"kite id {record.kite.id!r} is not a UUID (the postgres storage keeps ids in a uuid column)"
        )
    if not record.key_id:
        raise InvalidKiteError("empty key id (the postgres storage records the key pair a kite registered under)")
    if not is_uuid(record.key_id):
        raise InvalidKiteError(f"key id {record.key_id!r} is not a UUID (it must be the id of a stored key pair)")


def _record(row: list[Any]) -> KiteRecord:
    kite = KiteIdentity(**dict(zip(PATH_FIELDS, (str(v) for v in row[:7]), strict=True)))
    return KiteRecord(kite, row[7], str(row[8]))


def _key_pair(row: list[Any]) -> KeyPair:
    return KeyPair(str(row[0]), row[1], row[2], row[3], row[4])


def _kite_rows(writes: Iterable[tuple[KiteRecord, float | None]], events: Sequence[tuple[str, int]] = ()) -> str:
    """The ``:rows`` parameter of the statements on :data:`_ROWS`, a row per write (and, for
    new kites, each one's encoded REGISTER event and the payload it goes in)."""
    rows = []
    for record, ttl in writes:
        kite = record.kite
        rows.append({"username": kite.username, "environment": kite.environment, "kitename": kite.name,
                     "version": kite.version, "region": kite.region, "hostname": kite.hostname, "id": kite.id,
                     "url": record.url, "key_id": record.key_id, "ttl": ttl})
    for rank, (row, (event, chunk)) in enumerate(zip(rows, events, strict=False)):
        row.update(event=event, chunk=chunk, ord=rank)
    return orjson.dumps(rows).decode()


def _json_rows(rows: list[list[Any]]) -> list[list[Any]]:
    """The rows of a statement made by :func:`_as_json`."""
    return orjson.loads(rows[0][0])


def _ids(ids: Iterable[str]) -> str:
    """The ``:ids`` parameter (checked UUIDs)."""
    return ",".join(ids)


# -- events ---------------------------------------------------------------------------------


def _encode_event(event: KiteEvent) -> str:
    return json.dumps([event.action, event.kite.to_wire(), event.url, event.key_id], separators=(",", ":"))


def _event_chunks(encoded: Sequence[str]) -> list[int | None]:
    """The NOTIFY payload each encoded event goes in (payloads of consecutive events, each under
    :data:`MAX_PAYLOAD` as a JSON list); None: too large to announce at all (left out, with a warning)."""
    chunks: list[int | None] = []
    chunk, size = 0, 0
    for text in encoded:
        length = len(text.encode()) + 1
        if length + 1 > MAX_PAYLOAD:
            log.warning("not announcing a kite event: too large for a notification: %.200s", text)
            chunks.append(None)
            continue
        if size and size + length > MAX_PAYLOAD - 2:
            chunk, size = chunk + 1, 0
        chunks.append(chunk)
        size += length
    return chunks


def event_payloads(events: Iterable[KiteEvent]) -> list[str]:
    """The NOTIFY payloads (JSON lists of events) announcing ``events``, each under :data:`MAX_PAYLOAD`.

    A single event too large to announce (a huge URL) is left out, with a warning.
    """
    encoded = [_encode_event(event) for event in events]
    payloads: dict[int, list[str]] = {}
    for text, chunk in zip(encoded, _event_chunks(encoded), strict=True):
        if chunk is not None:
            payloads.setdefault(chunk, []).append(text)
    return ["[" + ",".join(batch) + "]" for batch in payloads.values()]


def decode_events(payload: str) -> list[KiteEvent]:
    """Inverse of :func:`event_payloads` for one payload; garbage gives ``[]`` (with a warning)."""
    try:
        return [KiteEvent(a, KiteIdentity(**kite), url, key_id) for a, kite, url, key_id in json.loads(payload)]
    except (ValueError, TypeError) as e:
        log.warning("ignoring a malformed notification on %s (%s): %.200s", CHANNEL, e, payload)
        return []


# -- connections ----------------------------------------------------------------------------


def _tcp_socket(host: str, port: int, timeout: float | None) -> socket.socket:
    """A connection to the server with Nagle's algorithm off and keep-alives on, for pg8000.

    pg8000 leaves Nagle on: a message larger than its 8 KiB write buffer (a batch of 30 kites)
    goes out in two writes, and the second waited for the server's delayed ACK of the first --
    40 ms a round trip (measured: a group commit of registrations at 600/s instead of 2,500/s).
    """
    sock = socket.create_connection((host, port), timeout)
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    except OSError:
        sock.close()
        raise
    return sock


class _TimedOut(Exception):
    """An operation ran over the storage's ``timeout`` (raised by gevent.Timeout)."""


class Connection:
    """One server connection with its prepared statements (each SQL text is prepared once)."""

    def __init__(self, raw: pg8000.native.Connection) -> None:
        self.raw = raw
        self._statements: dict[str, Any] = {}
        #: Set when the connection cannot be trusted any more; the pool then drops it.
        self.broken = False
        #: Statements that succeeded since it was handed out (0: retrying is safe).
        self.succeeded = 0

    def run(self, sql: str, **params: Any) -> list[list[Any]]:
        """Run ``sql`` (``:name`` placeholders) and return its rows (``[]`` for none)."""
        statement = self._statements.get(sql)
        if statement is None:
            statement = self._statements[sql] = self.raw.prepare(sql)
        rows = statement.run(**params)
        self.succeeded += 1
        return rows or []

    def execute(self, sql: str) -> None:
        """Run parameterless SQL (one or more statements) with the simple protocol."""
        self.raw.run(sql)
        self.succeeded += 1

    def close(self) -> None:
        """Close quietly (it may be broken already)."""
        try:
            self.raw.close()
        except Exception as e:
            log.debug("closing a connection: %s", e)


def _fields(error: DatabaseError) -> dict[str, str]:
    """The fields of a server error (pg8000 passes them as a dict: ``C`` the SQLSTATE, ``M`` the message)."""
    return error.args[0] if error.args and isinstance(error.args[0], dict) else {}


def _database_error(error: DatabaseError, where: str) -> StorageError:
    """The storage error for an error the server reported."""
    fields = _fields(error)
    code, message = str(fields.get("C", "")), fields.get("M", str(error))
    if code in _TRANSIENT_CODES or code[:2] in _TRANSIENT_CLASSES:
        return StorageUnavailableError(f"postgres at {where}: {message} ({code})")
    return PostgresError(f"postgres: {message} ({code})", code)


def _breaks_connection(error: BaseException) -> bool:
    """Whether ``error`` leaves the connection unusable (network, protocol, server going away)."""
    if isinstance(error, DatabaseError):
        fields = _fields(error)
        return fields.get("S") == "FATAL" or str(fields.get("C", ""))[:2] in ("08", "57")
    return True


class PostgresError(StorageError):
    """An error reported by the server that retrying will not fix; ``code`` is its SQLSTATE."""

    def __init__(self, message: str, code: str) -> None:
        super().__init__(message)
        self.code = code


class ConnectionPool:
    """At most ``size`` connections; callers wait up to ``wait_timeout`` seconds for a free one.

    Idle connections are reused newest first. A connection marked broken is closed
    instead of returned.
    """

    def __init__(self, connect: Callable[[], Connection], size: int, wait_timeout: float) -> None:
        if size < 1:
            raise ValueError("pool_size must be at least 1")
        self.size = size
        self._connect = connect
        self._wait_timeout = wait_timeout
        self._slots = BoundedSemaphore(size)
        self._idle: list[Connection] = []
        self.closed = False

    @contextmanager
    def connection(self, fresh: bool = False) -> Iterator[tuple[Connection, bool]]:
        """``(connection, reused)``: an idle connection (reused) or, when none or ``fresh``, a new one."""
        if not self._slots.acquire(timeout=self._wait_timeout):
            raise StorageUnavailableError(
                f"postgres: all {self.size} connections busy for {self._wait_timeout:g} s (pool_size)"
            )
        conn: Connection | None = None
        try:
            reused = bool(self._idle) and not fresh
            conn = self._idle.pop() if reused else self._connect()
            conn.succeeded = 0
            yield conn, reused
        finally:
            if conn is not None:
                self._put_back(conn)
            self._slots.release()

    def _put_back(self, conn: Connection) -> None:
        if conn.broken or self.closed:
            conn.close()
        else:
            self._idle.append(conn)

    def close(self) -> None:
        """Close the idle connections; the ones in use are closed when they come back."""
        self.closed = True
        while self._idle:
            self._idle.pop().close()


# -- the storage ----------------------------------------------------------------------------


class PostgresStorage(Storage):
    """Kites, watches and key pairs in PostgreSQL, in the Go Kontrol's schema (see the module docstring).

    ``settings`` says where to connect (see :meth:`from_url` for URLs and the
    ``KONTROL_POSTGRES_*`` variables). ``pool_size`` bounds the connections for calls
    (one more while anything watches); ``pool_timeout`` is how long a call waits for
    one; ``timeout`` bounds each operation on the server; ``purge_interval`` is how often
    expired kites are deleted and announced; ``ssl_context`` (an ``ssl.SSLContext``)
    turns on TLS, off by default as in Go (``sslmode=disable``).
    """

    def __init__(
        self,
        settings: PostgresSettings,
        *,
        pool_size: int = DEFAULT_POOL_SIZE,
        pool_timeout: float = DEFAULT_POOL_TIMEOUT,
        timeout: float = DEFAULT_TIMEOUT,
        purge_interval: float = DEFAULT_PURGE_INTERVAL,
        ssl_context: Any = None,
    ) -> None:
        if purge_interval <= 0:
            raise ValueError("purge_interval must be positive")
        self.settings = settings
        self._timeout = timeout
        self._ssl_context = ssl_context if ssl_context is not None else False
        self._pool = ConnectionPool(self._connect, pool_size, pool_timeout)
        # Concurrent upserts, refreshes and lookups by id share round trips (group commit); a batch
        # that the server refuses is retried a write at a time, so one bad write fails alone.
        self._upserts: Coalescer[tuple[KiteRecord, float | None], None] = Coalescer(
            self._write_kites, max_size=BATCH_SIZE, keys=lambda w: (w[0].kite.id,),
            alone=lambda e: isinstance(e, PostgresError))
        self._refreshes: Coalescer[tuple[str, float | None], bool] = Coalescer(
            self._refresh_kites, max_size=BATCH_SIZE, keys=lambda r: (r[0],))
        self._lookups: Coalescer[str, KiteRecord | None] = Coalescer(self._get_kites, max_size=BATCH_SIZE)
        self._schema_ready = False
        self._schema_lock = Semaphore()
        self._hub = WatchHub(on_empty=self._stop_pump)
        self._pump: EventPump | None = None
        self._first_listener: list[Connection] = []
        self.closed = False
        try:
            self._ensure_schema()
        except StorageUnavailableError as e:
            log.warning("%s: %s; creating the tables on first use", settings, e)
        except BaseException:
            self._pool.close()
            raise
        self._purge_failing = False
        self._purger = gevent.spawn(purge_forever, weakref.ref(self), purge_interval)

    @classmethod
    def from_url(cls, url: str, **options: Any) -> PostgresStorage:
        """Open ``postgres://user:password@host:port/dbname`` (or ``postgresql://``).

        A bare ``postgres``/``postgres://`` (or ``postgresql``) takes everything from the
        Go Kontrol's variables ``KONTROL_POSTGRES_HOST`` (localhost), ``_PORT`` (5432),
        ``_USERNAME`` and ``_DBNAME`` (both required), ``_PASSWORD`` and
        ``_CONNECTTIMEOUT`` (20 s); they also fill in what a URL leaves out.
        ``options`` go to the constructor.
        """
        return cls(PostgresSettings.from_url(url), **options)

    # -- connections --------------------------------------------------------------------

    def _connect(self, application_name: str = APPLICATION_NAME) -> Connection:
        s = self.settings
        try:
            raw = pg8000.native.Connection(
                s.user,
                sock=_tcp_socket(s.host, s.port, s.connect_timeout),
                host=s.host,
                port=s.port,
                database=s.database,
                password=s.password,
                timeout=s.connect_timeout,
                application_name=application_name,
                ssl_context=self._ssl_context,
            )
        except DatabaseError as e:
            raise _database_error(e, str(s)) from e
        except (InterfaceError, OSError) as e:
            raise StorageUnavailableError(f"cannot connect to {s}: {e}") from e
        return Connection(raw)

    def _run(self, work: Callable[[Connection], T], write: bool = False) -> T:
        """Run ``work`` on a pooled connection (in a transaction when ``write``), mapping errors."""
        if self.closed:
            raise StorageError("storage is closed")
        if not self._schema_ready:
            self._ensure_schema()
        return self._run_on_pool(work, write)

    def _run_on_pool(self, work: Callable[[Connection], T], write: bool) -> T:
        for attempt in (1, 2):
            with self._pool.connection(fresh=attempt == 2) as (conn, reused):
                try:
                    return self._attempt(conn, work, write)
                except _Retry as e:
                    # An idle connection died (a restarted server, say) before the server did
                    # anything for us: once more on a fresh one.
                    if attempt == 1 and reused:
                        log.debug("%s: a pooled connection failed (%s); retrying on a new one", self.settings, e)
                        continue
                    raise e.error from e.__cause__
        raise AssertionError("unreachable")

    def _attempt(self, conn: Connection, work: Callable[[Connection], T], write: bool) -> T:
        try:
            with gevent.Timeout(self._timeout, _TimedOut):
                if write:
                    conn.execute("BEGIN")
                try:
                    result = work(conn)
                    if write:
                        conn.execute("COMMIT")
                    return result
                except Exception as e:
                    if write and not _breaks_connection_or_timeout(e):
                        self._rollback(conn)
                    raise
                except BaseException:
                    conn.broken = True  # killed mid-operation: the server rolls back when it goes
                    raise
        except _TimedOut as e:
            conn.broken = True
            raise StorageUnavailableError(f"{self.settings}: no answer within {self._timeout:g} s") from e
        except DatabaseError as e:
            conn.broken = _breaks_connection(e)
            raise self._failure(conn, _database_error(e, str(self.settings))) from e
        except (InterfaceError, OSError) as e:
            conn.broken = True
            raise self._failure(conn, StorageUnavailableError(f"{self.settings}: {e}")) from e

    @staticmethod
    def _failure(conn: Connection, error: StorageError) -> Exception:
        """``error``, or a :class:`_Retry` of it when the connection broke before anything succeeded."""
        return _Retry(error) if conn.broken and conn.succeeded == 0 else error

    @staticmethod
    def _rollback(conn: Connection) -> None:
        try:
            conn.execute("ROLLBACK")
        except Exception as e:
            log.debug("rollback failed: %s", e)
            conn.broken = True

    def _ensure_schema(self) -> None:
        """Create what is missing of the schema (once per instance; concurrent Kontrols take turns)."""
        with self._schema_lock:
            if self._schema_ready:
                return
            self._run_on_pool(self._create_schema, write=True)
            self._schema_ready = True

    @staticmethod
    def _create_schema(conn: Connection) -> None:
        if not conn.run(_MISSING_OBJECTS, names=list(_SCHEMA_OBJECTS)):
            return  # all there (perhaps made by the Go setup scripts): no DDL, no privileges needed
        conn.execute(f"SELECT pg_advisory_xact_lock({SCHEMA_LOCK})")
        conn.execute(_SCHEMA)
        log.info("created the kite schema (tables kite.kite, kite.key)")

    # -- kites --------------------------------------------------------------------------

    @staticmethod
    def _notify(conn: Connection, events: list[KiteEvent]) -> None:
        payloads = event_payloads(events)
        if payloads:
            conn.run(_NOTIFY, payloads=orjson.dumps(payloads).decode())

    def _write_kites(self, writes: Sequence[tuple[KiteRecord, float | None]]) -> list[None]:
        """Upsert the kites of ``writes`` (distinct ids) together (group commit): the new ones in one
        statement, then those that exist in one transaction."""
        ordered = sorted(writes, key=lambda w: w[0].kite.id)
        inserted = self._run(lambda conn: self._insert_new(conn, ordered))
        existing = [w for w in ordered if w[0].kite.id not in inserted]
        if existing:
            self._run(lambda conn: self._update_existing(conn, existing), write=True)
        return [None] * len(writes)

    @staticmethod
    def _insert_new(conn: Connection, writes: Sequence[tuple[KiteRecord, float | None]]) -> set[str]:
        """Insert the kites of ``writes`` that have no row, announcing each; their ids."""
        encoded = [_encode_event(event) for record, _ in writes for event in change_events(None, record)]
        chunks = [-1 if c is None else c for c in _event_chunks(encoded)]
        rows = conn.run(_INSERT_NEW_KITES, rows=_kite_rows(writes, list(zip(encoded, chunks, strict=True))))
        return {kid for ids, _ in rows for kid in ids.split(",")}

    def _update_existing(self, conn: Connection, writes: Sequence[tuple[KiteRecord, float | None]]) -> None:
        """Upsert kites that had rows (in a transaction: UPDATE returning the old rows, INSERT
        those deleted meanwhile, NOTIFY what changed)."""
        pending = {record.kite.id: (record, ttl) for record, ttl in writes}
        events: list[KiteEvent] = []
        for _ in range(UPSERT_ATTEMPTS):
            rows = _kite_rows(pending.values())
            for row in _json_rows(conn.run(_UPDATE_KITES, rows=rows, ids=_ids(pending))):
                old, live = _record(row), row[9]
                new = pending.pop(old.kite.id)[0]
                events += change_events(old, new) if live else change_events(old, None) + change_events(None, new)
            if not pending:
                break
            for (kid,) in conn.run(_INSERT_KITES, rows=_kite_rows(pending.values())):
                events += change_events(None, pending.pop(str(kid))[0])
            if not pending:
                break
            # Inserted by someone else since our UPDATE: update those rows.
        else:
            raise StorageError(f"kites {', '.join(pending)}: too many concurrent updates")
        self._notify(conn, events)

    def _checked_write(self, record: KiteRecord, ttl: float | None) -> None:
        try:
            self._upserts((record, ttl))
        except PostgresError as e:
            if e.code == "23503":  # foreign key: kite.kite.key_id -> kite.key.id
                raise InvalidKiteError(f"{e}: register kites under the id of a stored key pair") from None
            raise

    def upsert(self, kite: KiteIdentity, url: str, key_id: str = "", ttl: float | None = None) -> None:
        check_kite(kite, url)
        ttl = check_ttl(ttl)
        record = KiteRecord(KiteIdentity(**kite.to_wire()), url, key_id)
        _check_ids(record)
        self._checked_write(record, ttl)

    def upsert_many(self, records: Iterable[KiteRecord], ttl: float | None = None) -> None:
        """Upsert every record (in shared transactions, each record's fate its own); raise the first failure."""
        ttl = check_ttl(ttl)
        copies = [KiteRecord(KiteIdentity(**r.kite.to_wire()), r.url, r.key_id) for r in records]
        for r in copies:
            check_kite(r.kite, r.url)
            _check_ids(r)
        jobs = [gevent.spawn(self._checked_write, r, ttl) for r in copies]
        gevent.joinall(jobs)
        errors = [job.exception for job in jobs if job.exception is not None]
        if errors:
            raise errors[0]

    def _refresh_kites(self, refreshes: Sequence[tuple[str, float | None]]) -> list[bool]:
        """Refresh many kites in one statement: whether each one was stored (and live)."""
        rows = orjson.dumps([{"id": kid, "ttl": ttl} for kid, ttl in refreshes]).decode()
        (refreshed_ids,), = self._run(lambda conn: conn.run(_REFRESH_KITES, rows=rows))
        refreshed = set(refreshed_ids.split(",")) if refreshed_ids else set()
        return [kid in refreshed for kid, _ in refreshes]

    def refresh(self, kite: KiteRef, ttl: float | None) -> bool:
        ttl = check_ttl(ttl)
        kid = kite_id(kite)
        if not is_uuid(kid):
            return False
        return self._refreshes((kid, ttl))

    def delete(self, kite: KiteRef) -> bool:
        kid = kite_id(kite)
        if not is_uuid(kid):
            return False

        def work(conn: Connection) -> bool:
            rows = _json_rows(conn.run(_DELETE_KITE, id=kid))
            if not rows:
                return False
            self._notify(conn, change_events(_record(rows[0]), None))
            return bool(rows[0][9])

        return self._run(work, write=True)

    def _scan(self, prefix: tuple[str, ...]) -> Iterable[KiteRecord]:
        if len(prefix) == len(PATH_FIELDS) and not is_uuid(prefix[-1]):
            return []
        params = dict(zip(PATH_FIELDS, prefix, strict=False))
        rows = self._run(lambda conn: conn.run(_SCANS[len(prefix)], **params))
        return [_record(row) for row in _json_rows(rows)]

    def get_by_id(self, kite_id: str) -> KiteRecord | None:
        if not is_uuid(kite_id):
            return None
        return self._lookups(kite_id)

    def _get_kites(self, ids: Sequence[str]) -> list[KiteRecord | None]:
        """Look many kites up by id in one query."""
        rows = _json_rows(self._run(lambda conn: conn.run(_GET_KITES, ids=_ids(ids))))
        found = {r.kite.id: r for r in map(_record, rows)}
        return [found.get(kid) for kid in ids]

    def count(self) -> int:
        return int(self._run(lambda conn: conn.run(_COUNT_KITES))[0][0])

    def purge_expired(self) -> int:
        """Delete the expired kites now, announce them (``DEREGISTER``), and return how many there were."""

        def work(conn: Connection) -> int:
            rows = _json_rows(conn.run(_PURGE_KITES))
            self._notify(conn, [e for row in rows for e in change_events(_record(row), None)])
            return len(rows)

        purged = self._run(work, write=True)
        if purged:
            log.debug("purged %d expired kites", purged)
        return purged

    def _purge_round(self) -> None:
        """One round of the purger: an outage is logged when it starts and when it ends."""
        try:
            self.purge_expired()
        except StorageUnavailableError as e:
            if not self._purge_failing:
                log.warning("purging expired kites: %s (retrying every round)", e)
            self._purge_failing = True
            return
        except Exception:
            log.exception("purging expired kites failed")
            return
        if self._purge_failing:
            log.info("purging expired kites works again")
        self._purge_failing = False

    # -- watches ------------------------------------------------------------------------

    def watch(self, query: QueryLike, callback: WatchCallback) -> Watcher:
        q = KontrolQuery.coerce(query).validate()
        if self.closed:
            raise StorageError("storage is closed")
        if self._pump is None:
            # LISTEN before returning, so that every change committed from now on reaches us.
            self._first_listener.append(self._listen())
            self._pump = EventPump(f"postgres watch {self.settings}", self._follow, 0, self._hub.publish)
        return self._hub.add(q, callback)

    def _listen(self) -> Connection:
        conn = self._connect(LISTENER_NAME)
        conn.raw.notifications = deque()  # unbounded: pg8000's own keeps only the last 100
        try:
            with gevent.Timeout(self._timeout, _TimedOut):
                conn.execute(f"LISTEN {CHANNEL}")
        except (_TimedOut, DatabaseError, InterfaceError, OSError) as e:
            conn.close()
            raise StorageUnavailableError(f"{self.settings}: cannot LISTEN: {e}") from e
        return conn

    def _follow(self, start: int) -> Iterator[tuple[int, list[KiteEvent]]]:
        """The notifications as events, on the listener connection (see :data:`kontrol.storage.watch.Follow`)."""
        conn = self._first_listener.pop() if self._first_listener else self._listen()
        try:
            while True:
                _wait_readable(conn, LISTEN_POLL_INTERVAL)
                with gevent.Timeout(self._timeout, _TimedOut):
                    conn.execute("")  # a round trip: pg8000 reads the notifications that came
                events = self._drain(conn)
                if events:
                    yield 0, events
        finally:
            conn.close()

    @staticmethod
    def _drain(conn: Connection) -> list[KiteEvent]:
        events: list[KiteEvent] = []
        notifications = conn.raw.notifications
        while notifications:
            _pid, channel, payload = notifications.popleft()
            if channel == CHANNEL:
                events += decode_events(payload)
        return events

    def _stop_pump(self) -> None:
        if self._pump is not None:
            self._pump.stop()
            self._pump = None
        while self._first_listener:
            self._first_listener.pop().close()

    # -- key pairs ----------------------------------------------------------------------

    def add_key_pair(self, id: str, public: str, private: str) -> KeyPair:
        pair = new_key_pair(id, public, private)
        if not is_uuid(pair.id):
            raise KeyPairError(f"key pair id {pair.id!r} is not a UUID (the postgres storage keeps ids as uuid)")
        try:
            rows = self._run(
                lambda conn: conn.run(_INSERT_KEY, id=pair.id, public=pair.public, private=pair.private), write=True
            )
        except PostgresError as e:
            if e.code == "23505":  # unique: the id, the public or the private key
                raise KeyPairExistsError(f"key pair {pair.id} or its public or private key already exists") from None
            raise
        return _key_pair(rows[0])

    def _find(self, sql: str, **params: str) -> KeyPair:
        rows = self._run(lambda conn: conn.run(sql, **params))
        if not rows:
            raise KeyPairNotFoundError()
        return _key_pair(rows[0])

    def get_key_pair(self, id: str) -> KeyPair:
        if not is_uuid(id):
            raise KeyPairNotFoundError()
        return check_usable(self._find(_KEY_BY_ID, id=id))

    def get_key_pair_by_public(self, public: str) -> KeyPair:
        return check_usable(self._find(_KEY_BY_PUBLIC, public=public.strip()))

    def delete_key_pair(self, id: str) -> None:
        if not is_uuid(id) or not self._run(lambda conn: conn.run(_DELETE_KEY, id=id)):
            raise KeyPairNotFoundError()

    def list_key_pairs(self, include_deleted: bool = False) -> list[KeyPair]:
        rows = self._run(lambda conn: conn.run(_ALL_KEYS))
        return newest_first((_key_pair(row) for row in rows), include_deleted)

    # -- lifecycle ----------------------------------------------------------------------

    def ping(self) -> None:
        self._run(lambda conn: conn.run("SELECT 1"))

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._purger.kill(block=False)
        self._hub.close()
        self._stop_pump()
        self._pool.close()
        gevent.sleep(0)  # let the killed listener unwind and close its connection

    def __repr__(self) -> str:
        return f"PostgresStorage({self.settings})"


class _Retry(Exception):
    """Internal: ``error`` happened on a connection that broke before the server did anything."""

    def __init__(self, error: StorageError) -> None:
        super().__init__(str(error))
        self.error = error


def _breaks_connection_or_timeout(error: BaseException) -> bool:
    return isinstance(error, _TimedOut | gevent.Timeout) or (
        isinstance(error, DatabaseError | InterfaceError | OSError) and _breaks_connection(error)
    )


def _wait_readable(conn: Connection, timeout: float) -> None:
    """Wait until the server sent something (a notification), at most ``timeout`` seconds."""
    sock = getattr(conn.raw, "_usock", None)  # pg8000's socket; without it, just poll
    if sock is None:
        gevent.sleep(timeout)
        return
    try:
        wait_read(sock.fileno(), timeout=timeout)
    except OSError:
        pass  # timed out (socket.timeout is an OSError), or closed: the round trip will tell


__all__ = [
    "CHANNEL",
    "GO_KEY_TTL",
    "ConnectionPool",
    "PostgresError",
    "PostgresSettings",
    "PostgresStorage",
    "decode_events",
    "event_payloads",
    "is_uuid",
]

