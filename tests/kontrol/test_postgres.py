"""The PostgreSQL backend against a real server: the Go Kontrol's tables and rows, ids, TTLs, watches
across instances, the bounded pool, outages and settings. The storage contract and Kontrol itself run
on postgres in the shared tests (postgres is one of conftest.BACKENDS)."""

from __future__ import annotations

import datetime
import signal
import time
import uuid
from collections.abc import Callable, Iterator

import gevent
import pytest
import requests

from kite.wire.protocol import KiteIdentity
from kontrol.registry import WEBSOCKET, Registry
from kontrol.storage import (
    DEREGISTER,
    REGISTER,
    InvalidKiteError,
    KeyPairDeletedError,
    KeyPairError,
    KeyPairNotFoundError,
    KiteRecord,
    KontrolQuery,
    StorageError,
    StorageUnavailableError,
    open_storage,
)
from kontrol.storage.postgres import (
    GO_KEY_TTL,
    LISTENER_NAME,
    MAX_PAYLOAD,
    PostgresError,
    PostgresSettings,
    PostgresStorage,
    decode_events,
    event_payloads,
)

from .conftest import POSTGRES_PASSWORD, POSTGRES_USER, PostgresServer, Recorder, start_kontrol, wait_until
from .test_storage import LONG_TTL, SHORT_TTL, make_kite

Opener = Callable[..., PostgresStorage]


def database_of(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.fixture
def url(postgres_database: str) -> str:
    return postgres_database


@pytest.fixture
def opened(url: str) -> Iterator[Opener]:
    """Opens storages on the test's database (``options`` to the constructor); all closed afterwards."""
    storages: list[PostgresStorage] = []

    def open_(**options) -> PostgresStorage:
        storage = open_storage(url, **options)
        assert isinstance(storage, PostgresStorage)
        storages.append(storage)
        return storage

    yield open_
    for storage in storages:
        storage.close()


@pytest.fixture
def pg(opened: Opener) -> PostgresStorage:
    return opened()


@pytest.fixture
def admin(postgres_server: PostgresServer, url: str):
    """A superuser connection to the test's database."""
    with postgres_server.admin(database_of(url)) as db:
        yield db


def pems() -> tuple[str, str]:
    """A (public, private) pair of distinct PEM-looking strings (the storage does not parse them)."""
    tag = uuid.uuid4().hex
    return f"-----BEGIN PUBLIC KEY-----\n{tag}\n-----END PUBLIC KEY-----", f"-----BEGIN PRIVATE KEY-----\n{tag}"


@pytest.fixture
def key_id(pg: PostgresStorage) -> str:
    """The id of a stored key pair (kites must be registered under one)."""
    return pg.add_key_pair("", *pems()).id


# -- the Go schema --------------------------------------------------------------------------


def layout(db) -> dict:
    """Everything about schema ``kite`` that the Go Kontrol depends on, read from the catalogs."""
    return {
        "columns": db.run(
            "SELECT table_name, ordinal_position, column_name, data_type, is_nullable, datetime_precision "
            "FROM information_schema.columns WHERE table_schema = 'kite' ORDER BY table_name, ordinal_position"
        ),
        "defaults": db.run(
            "SELECT table_name, column_name, column_default FROM information_schema.columns "
            "WHERE table_schema = 'kite' AND column_default IS NOT NULL ORDER BY table_name, column_name"
        ),
        "persistence": db.run(
            "SELECT c.relname, c.relpersistence FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'kite' AND c.relkind = 'r' ORDER BY c.relname"
        ),
        "constraints": db.run(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint "
            "WHERE connamespace = 'kite'::regnamespace ORDER BY 1, 2"
        ),
        "indexes": db.run("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'kite' ORDER BY indexname"),
    }


TIMESTAMPTZ = "timestamp with time zone"
GO_KITE_COLUMNS = [
    ["kite", 1, "username", "text", "NO", None],
    ["kite", 2, "environment", "text", "NO", None],
    ["kite", 3, "kitename", "text", "NO", None],
    ["kite", 4, "version", "text", "NO", None],
    ["kite", 5, "region", "text", "NO", None],
    ["kite", 6, "hostname", "text", "NO", None],
    ["kite", 7, "id", "uuid", "NO", None],
    ["kite", 8, "url", "text", "NO", None],
    ["kite", 9, "created_at", TIMESTAMPTZ, "NO", 6],
    ["kite", 10, "updated_at", TIMESTAMPTZ, "NO", 6],
    ["kite", 11, "key_id", "uuid", "NO", None],
]
GO_KEY_COLUMNS = [
    ["key", 1, "id", "uuid", "NO", None],
    ["key", 2, "public", "text", "NO", None],
    ["key", 3, "private", "text", "NO", None],
    ["key", 4, "created_at", TIMESTAMPTZ, "NO", 6],
    ["key", 5, "deleted_at", TIMESTAMPTZ, "YES", 6],
]


def test_tables_match_the_go_schema(pg: PostgresStorage, admin) -> None:
    found = layout(admin)
    assert found["columns"] == GO_KEY_COLUMNS + GO_KITE_COLUMNS
    assert found["persistence"] == [["key", "p"], ["kite", "u"]]  # kite.kite is UNLOGGED
    assert found["constraints"] == [
        ["kite.key", "key_created_at_lte_deleted_at_check", "CHECK ((created_at <= deleted_at))"],
        ["kite.key", "key_pkey", "PRIMARY KEY (id)"],
        ["kite.key", "key_private_unique", "UNIQUE (private)"],
        ["kite.key", "key_public_unique", "UNIQUE (public)"],
        ["kite.kite", "kite_key_id_fkey", "FOREIGN KEY (key_id) REFERENCES kite.key(id)"],
        ["kite.kite", "kite_pkey", "PRIMARY KEY (id)"],
    ]
    indexes = dict(found["indexes"])
    assert indexes["kite_updated_at_btree_idx"] == (
        "CREATE INDEX kite_updated_at_btree_idx ON kite.kite USING btree (updated_at DESC)"
    )
    assert indexes["kite_key_public_idx"] == "CREATE INDEX kite_key_public_idx ON kite.key USING btree (public)"
    assert indexes["kite_key_deleted_at_public_idx"] == (  # DESC NULLS FIRST: PostgreSQL shows it as plain DESC
        "CREATE INDEX kite_key_deleted_at_public_idx ON kite.key USING btree (deleted_at DESC, public)"
    )
    assert found["defaults"] == [
        ["key", "created_at", "now()"],
        ["key", "id", "gen_random_uuid()"],  # Go: uuid_generate_v4() (uuid-ossp); both are random v4 UUIDs
        ["kite", "created_at", "(now() AT TIME ZONE 'UTC'::text)"],
        ["kite", "updated_at", "(now() AT TIME ZONE 'UTC'::text)"],
    ]


def go_setup(db, role: str, user: str, password: str) -> None:
    """What the Go Kontrol's setup scripts make (PROTOCOL.md §7.11): a role and its login user, the
    schema with uuid-ossp, both tables and their indexes, and the Go grants (no DELETE on keys)."""
    db.run(f"CREATE ROLE {role}")
    db.run(f"CREATE USER {user} PASSWORD '{password}'")
    db.run(f"GRANT {role} TO {user}")
    db.run("CREATE SCHEMA kite")
    db.run(f"GRANT USAGE ON SCHEMA kite TO {role}")
    db.run('CREATE EXTENSION IF NOT EXISTS "uuid-ossp"')
    db.run(
        "CREATE TABLE kite.key (id uuid NOT NULL DEFAULT uuid_generate_v4(), public text NOT NULL, "
        "private text NOT NULL, created_at timestamptz(6) NOT NULL DEFAULT now(), deleted_at timestamptz(6), "
        "PRIMARY KEY (id), CONSTRAINT key_public_unique UNIQUE (public), "
        "CONSTRAINT key_private_unique UNIQUE (private), "
        "CONSTRAINT key_created_at_lte_deleted_at_check CHECK (created_at <= deleted_at))"
    )
    db.run(f"GRANT SELECT, INSERT, UPDATE ON kite.key TO {user}")
    db.run(
        "CREATE UNLOGGED TABLE kite.kite (username text NOT NULL, environment text NOT NULL, "
        "kitename text NOT NULL, version text NOT NULL, region text NOT NULL, hostname text NOT NULL, "
        "id uuid PRIMARY KEY, url text NOT NULL, "
        "created_at timestamptz NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'), "
        "updated_at timestamptz NOT NULL DEFAULT (now() AT TIME ZONE 'UTC'), key_id uuid NOT NULL, "
        "CONSTRAINT kite_key_id_fkey FOREIGN KEY (key_id) REFERENCES kite.key (id))"
    )
    db.run(f"GRANT SELECT, INSERT, UPDATE, DELETE ON kite.kite TO {role}")
    db.run("CREATE INDEX kite_updated_at_btree_idx ON kite.kite USING btree (updated_at DESC)")
    db.run("CREATE INDEX kite_key_public_idx ON kite.key USING btree (public)")
    db.run("CREATE INDEX kite_key_deleted_at_public_idx ON kite.key USING btree (deleted_at DESC NULLS FIRST, public)")


def test_works_in_tables_made_by_the_go_setup(postgres_server: PostgresServer, pg: PostgresStorage, admin) -> None:
    """Tables from the Go scripts are the same as ours, and we use them with the Go application's
    grants only: no DDL is attempted when nothing is missing, and key pairs are never deleted."""
    name = postgres_server.create_database()
    suffix = uuid.uuid4().hex[:8]
    role, user, password = f"go_kontrol_{suffix}", f"go_kontrolapplication_{suffix}", "go-password"
    try:
        with postgres_server.admin(name) as db:
            go_setup(db, role, user, password)
            theirs = layout(db)
        ours = layout(admin)
        assert theirs["defaults"][1] == ["key", "id", "uuid_generate_v4()"]
        theirs["defaults"][1] = ours["defaults"][1]
        assert theirs == ours

        location = f"postgres://{user}:{password}@127.0.0.1:{postgres_server.port}/{name}"
        with open_storage(location) as storage:
            pair = storage.add_key_pair("", *pems())
            kite = make_kite()
            storage.upsert(kite, "http://10.0.4.17:6000/kite", pair.id, ttl=GO_KEY_TTL)
            assert storage.get({"username": "alice"}) == [KiteRecord(kite, "http://10.0.4.17:6000/kite", pair.id)]
            assert storage.refresh(kite, GO_KEY_TTL) is True
            storage.delete_key_pair(pair.id)
            with pytest.raises(KeyPairDeletedError):
                storage.get_key_pair(pair.id)
            assert storage.delete(kite) is True
            assert storage.purge_expired() == 0
    finally:
        postgres_server.drop_database(name)
        with postgres_server.admin() as db:
            db.run(f"DROP ROLE IF EXISTS {user}")
            db.run(f"DROP ROLE IF EXISTS {role}")


def test_schema_setup_is_idempotent_under_concurrent_starts(opened: Opener, admin) -> None:
    jobs = [gevent.spawn(opened) for _ in range(4)]
    gevent.joinall(jobs, raise_error=True)
    storages = [job.value for job in jobs]
    storages[0].add_key_pair("", *pems())
    assert [len(s.list_key_pairs()) for s in storages] == [1, 1, 1, 1]
    assert admin.run("SELECT count(*) FROM pg_tables WHERE schemaname = 'kite'") == [[2]]


def test_a_deleted_key_pair_stays_a_row_with_deleted_at(pg: PostgresStorage, admin) -> None:
    public, private = pems()
    pair = pg.add_key_pair("", public, private)
    kite = make_kite()
    pg.upsert(kite, "http://a/kite", pair.id, ttl=LONG_TTL)
    pg.delete_key_pair(pair.id)
    pg.delete_key_pair(pair.id)  # again: it stays deleted, with its first deletion time

    [[deleted_at, created_at]] = admin.run(
        "SELECT deleted_at, created_at FROM kite.key WHERE id = CAST(:id AS uuid)", id=pair.id
    )
    assert deleted_at is not None and deleted_at >= created_at
    for lookup in (lambda: pg.get_key_pair(pair.id), lambda: pg.get_key_pair_by_public(public)):
        with pytest.raises(KeyPairDeletedError, match="^key pair is removed$") as e:
            lookup()
        assert e.value.key_pair.id == pair.id
    assert pg.list_key_pairs() == []
    [listed] = pg.list_key_pairs(include_deleted=True)
    assert listed.id == pair.id and listed.deleted_at == deleted_at.timestamp()
    # Kites registered under it are still there (the foreign key holds).
    assert pg.get_by_id(kite.id) == KiteRecord(kite, "http://a/kite", pair.id)
    with pytest.raises(KeyPairNotFoundError, match="^no key pair found$"):
        pg.delete_key_pair(str(uuid.uuid4()))


# -- rows shared with a Go Kontrol ----------------------------------------------------------

#: The Go Kontrol's statements (kontrol/postgres.go), in pg8000's placeholder style.
GO_UPDATE = (
    "UPDATE kite.kite SET url = :url, key_id = CAST(:key_id AS uuid), updated_at = (now() at time zone 'utc') "
    "WHERE id = CAST(:id AS uuid)"
)
GO_INSERT = (
    "INSERT INTO kite.kite (username, environment, kitename, version, region, hostname, id, url, key_id) "
    "VALUES (:username, :environment, :name, :version, :region, :hostname, CAST(:id AS uuid), :url, "
    "CAST(:key_id AS uuid))"
)
GO_SELECT = "SELECT * FROM kite.kite WHERE username = :username AND environment = :environment"
GO_CLEANER = "DELETE FROM kite.kite WHERE updated_at < (now() at time zone 'utc') - ((INTERVAL '1 second') * 90)"


def go_upsert(db, kite: KiteIdentity, url: str, key_id: str) -> None:
    db.run("BEGIN")
    db.run(GO_UPDATE, url=url, key_id=key_id, id=kite.id)
    if db.row_count == 0:
        db.run(GO_INSERT, **kite.to_wire(), url=url, key_id=key_id)
    db.run("COMMIT")


def test_a_go_kontrol_reads_our_rows_and_we_read_its_rows(opened: Opener, key_id: str, admin) -> None:
    pg = opened(purge_interval=60)  # purged by hand below
    recorder = Recorder()
    pg.watch({"username": "alice"}, recorder)

    ours = make_kite()
    pg.upsert(ours, "http://ours/kite", key_id, ttl=GO_KEY_TTL)
    [row] = admin.run(GO_SELECT, username="alice", environment="production")
    *identity, kid, url, created_at, updated_at, stored_key = row
    assert identity == ["alice", "production", "math", "1.0.0", "eu-west", "worker-1"]
    assert (str(kid), url, str(stored_key)) == (ours.id, "http://ours/kite", key_id)
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((updated_at - now).total_seconds()) < 5 and created_at <= updated_at

    theirs = make_kite(hostname="go-host")
    go_upsert(admin, theirs, "http://theirs/kite", key_id)
    go_upsert(admin, theirs, "http://theirs-2/kite", key_id)  # their heartbeat: the UPDATE path
    assert pg.get_by_id(theirs.id) == KiteRecord(theirs, "http://theirs-2/kite", key_id)

    # A row the Go Kontrol last updated 91 s ago has expired for us too.
    stale = make_kite(hostname="stale")
    go_upsert(admin, stale, "http://stale/kite", key_id)
    admin.run("UPDATE kite.kite SET updated_at = updated_at - interval '91 seconds' WHERE id = CAST(:id AS uuid)",
              id=stale.id)
    assert {r.kite.id for r in pg.get({"username": "alice"})} == {ours.id, theirs.id}
    assert pg.get_by_id(stale.id) is None and pg.count() == 2
    assert pg.purge_expired() == 1
    recorder.wait_for(lambda events: (DEREGISTER, stale.id) in [(e.action, e.kite.id) for e in events])

    # The Go cleaner deletes what has expired by our TTLs, and nothing else.
    permanent, long, short = make_kite(), make_kite(), make_kite()
    pg.upsert(permanent, "http://p/kite", key_id, ttl=None)
    pg.upsert(long, "http://l/kite", key_id, ttl=LONG_TTL)
    pg.upsert(short, "http://s/kite", key_id, ttl=SHORT_TTL)
    gevent.sleep(SHORT_TTL + 0.2)
    admin.run(GO_CLEANER)
    assert admin.row_count == 1
    remaining = {str(r[6]) for r in admin.run(GO_SELECT, username="alice", environment="production")}
    assert remaining == {ours.id, theirs.id, permanent.id, long.id}


def test_ttls_are_written_as_updated_at(pg: PostgresStorage, key_id: str, admin) -> None:
    """``updated_at = now + ttl - 90 s``: a row expires after its own TTL under the Go rule too."""

    def offset(kite: KiteIdentity) -> float:
        [[seconds]] = admin.run(
            "SELECT CAST(EXTRACT(epoch FROM updated_at - now()) AS float8) FROM kite.kite WHERE id = CAST(:id AS uuid)",
            id=kite.id,
        )
        return seconds

    default, long, permanent = make_kite(), make_kite(), make_kite()
    pg.upsert(default, "http://d/kite", key_id, ttl=GO_KEY_TTL)
    pg.upsert(long, "http://l/kite", key_id, ttl=LONG_TTL)
    pg.upsert(permanent, "http://p/kite", key_id, ttl=None)
    assert abs(offset(default)) < 5
    assert abs(offset(long) - (LONG_TTL - GO_KEY_TTL)) < 5
    [[year]] = admin.run("SELECT EXTRACT(year FROM updated_at) FROM kite.kite WHERE id = CAST(:id AS uuid)",
                         id=permanent.id)
    assert int(year) == 9999
    assert pg.refresh(permanent, GO_KEY_TTL) is True and abs(offset(permanent)) < 5
    assert pg.refresh(default, None) is True and offset(default) > 1e9


# -- ids ------------------------------------------------------------------------------------


def test_ids_must_be_uuids(pg: PostgresStorage, key_id: str) -> None:
    for bad in ("not-a-uuid", str(uuid.uuid4()).upper(), "{" + str(uuid.uuid4()) + "}"):
        with pytest.raises(InvalidKiteError, match="is not a UUID"):
            pg.upsert(make_kite(id=bad), "http://x/kite", key_id)
    with pytest.raises(InvalidKiteError, match="^empty key id"):
        pg.upsert(make_kite(), "http://x/kite", "")
    with pytest.raises(InvalidKiteError, match="key id 'k1' is not a UUID"):
        pg.upsert(make_kite(), "http://x/kite", "k1")
    with pytest.raises(InvalidKiteError, match="stored key pair"):
        pg.upsert(make_kite(), "http://x/kite", str(uuid.uuid4()))  # no such key pair (the foreign key)
    with pytest.raises(InvalidKiteError, match="is not a UUID"):
        pg.upsert_many([KiteRecord(make_kite(), "http://a/kite", key_id), KiteRecord(make_kite(id="x"), "http://b")])
    assert pg.count() == 0
    with pytest.raises(KeyPairError, match="is not a UUID"):
        pg.add_key_pair("second", *pems())
    # The validation of every backend comes first, with the Go messages.
    with pytest.raises(InvalidKiteError, match="^Empty Kite field: id$"):
        pg.upsert(make_kite(id=""), "http://x/kite", key_id)

    # Looking up something that is not a UUID finds nothing.
    full = {**make_kite(id="x").to_wire()}
    assert pg.get_by_id("no-such-id") is None
    assert pg.get({"id": "no-such-id"}) == [] and pg.get(full) == []
    assert pg.delete("never-registered") is False
    assert pg.refresh("never-registered", LONG_TTL) is False
    for lookup in (lambda: pg.get_key_pair("nope"), lambda: pg.delete_key_pair("nope")):
        with pytest.raises(KeyPairNotFoundError):
            lookup()


# -- kites, TTLs and watches with real ids --------------------------------------------------


def test_upsert_replace_identity_change_and_delete(pg: PostgresStorage, admin) -> None:
    first, second = pg.add_key_pair("", *pems()).id, pg.add_key_pair("", *pems()).id
    recorder = Recorder()
    pg.watch({"username": "alice"}, recorder)
    kite = make_kite()
    pg.upsert(kite, "http://a/kite", first, ttl=LONG_TTL)
    pg.upsert(kite, "http://a/kite", first, ttl=LONG_TTL)  # unchanged: no event
    pg.upsert(kite, "http://a/kite", second, ttl=LONG_TTL)  # new key id: REGISTER
    moved = make_kite(id=kite.id, hostname="worker-9")
    pg.upsert(moved, "http://a/kite", second, ttl=LONG_TTL)  # identity change: DEREGISTER + REGISTER
    assert pg.get(KontrolQuery.from_kite(kite)) == []
    assert pg.get({"username": "alice"}) == [KiteRecord(moved, "http://a/kite", second)]
    assert admin.run("SELECT hostname FROM kite.kite") == [["worker-9"]]
    assert pg.delete(moved.id) is True and pg.delete(moved.id) is False
    recorder.wait_for(lambda events: len(events) >= 5)
    gevent.sleep(0.3)
    assert [(e.action, e.kite.hostname, e.key_id) for e in recorder.events] == [
        (REGISTER, "worker-1", first),
        (REGISTER, "worker-1", second),
        (DEREGISTER, "worker-1", second),
        (REGISTER, "worker-9", second),
        (DEREGISTER, "worker-9", second),
    ]


def test_watch_sees_other_instances_and_expiry(opened: Opener, key_id: str) -> None:
    watching, writing = opened(), opened()
    recorder = Recorder()
    watching.watch({"username": "alice"}, recorder)
    kite, short = make_kite(), make_kite()
    writing.upsert(kite, "http://a/kite", key_id)
    writing.upsert(short, "http://s/kite", key_id, ttl=SHORT_TTL)
    writing.delete(kite.id)
    recorder.wait_for(lambda events: len(events) >= 4)
    expected = [(REGISTER, kite.id), (REGISTER, short.id), (DEREGISTER, kite.id), (DEREGISTER, short.id)]
    assert recorder.actions() == expected
    assert watching.get({"username": "alice"}) == []
    assert writing.refresh(short, LONG_TTL) is False


def test_the_listener_connection_lives_while_anything_watches(postgres_server: PostgresServer,
                                                              pg: PostgresStorage) -> None:
    first, second = pg.watch({"username": "alice"}, Recorder()), pg.watch({"username": "bob"}, Recorder())
    assert _listening(postgres_server, pg)
    first.cancel()
    assert _listening(postgres_server, pg)
    second.cancel()
    wait_until(lambda: not _listening(postgres_server, pg))
    pg.watch({"username": "alice"}, Recorder())
    assert _listening(postgres_server, pg)
    pg.close()
    wait_until(lambda: not _listening(postgres_server, pg))


def test_expired_rows_are_hidden_then_purged_once(opened: Opener, key_id: str) -> None:
    a, b = opened(purge_interval=0.2), opened(purge_interval=0.2)  # two purgers race for the same rows
    recorder = Recorder()
    a.watch({"username": "alice"}, recorder)
    kites = [make_kite() for _ in range(20)]
    a.upsert_many([KiteRecord(k, "http://x/kite", key_id) for k in kites], ttl=SHORT_TTL)
    permanent = make_kite()
    b.upsert(permanent, "http://p/kite", key_id, ttl=None)
    wait_until(lambda: b.count() == 1)
    recorder.wait_for(lambda events: sum(e.action == DEREGISTER for e in events) >= 20)
    gevent.sleep(0.5)
    assert sorted(e.kite.id for e in recorder.events if e.action == DEREGISTER) == sorted(k.id for k in kites)
    assert a.get({"username": "alice"}) == [KiteRecord(permanent, "http://p/kite", key_id)]


def test_a_burst_of_changes_reaches_the_watcher(pg: PostgresStorage, key_id: str) -> None:
    """More notifications than pg8000 keeps by default (100) arrive between two reads of the listener."""
    recorder = Recorder()
    pg.watch({"username": "alice"}, recorder)
    kites = [make_kite(hostname=f"host-{i}") for i in range(400)]
    pg.upsert_many([KiteRecord(k, f"http://{i}/kite", key_id) for i, k in enumerate(kites)], ttl=LONG_TTL)
    recorder.wait_for(lambda events: len(events) >= 400)
    assert {e.kite.id for e in recorder.events} == {k.id for k in kites}
    assert pg.count() == 400


def test_concurrent_upserts_of_one_new_kite(pg: PostgresStorage, key_id: str) -> None:
    recorder = Recorder()
    pg.watch({"username": "alice"}, recorder)
    kite = make_kite()
    jobs = [gevent.spawn(pg.upsert, kite, "http://same/kite", key_id, LONG_TTL) for _ in range(30)]
    gevent.joinall(jobs, raise_error=True)
    assert pg.count() == 1
    recorder.wait_for(lambda events: len(events) >= 1)
    gevent.sleep(0.3)
    assert recorder.actions() == [(REGISTER, kite.id)]  # the INSERT race was lost quietly, once


def test_concurrent_writes_refreshes_and_lookups_share_statements(opened: Opener, key_id: str) -> None:
    """Group commit: many concurrent calls, few transactions; each caller still gets its own answer,
    and watchers get each kite's events once."""
    pg, observer = opened(), opened()
    recorder = Recorder()
    observer.watch({"username": "alice"}, recorder)
    kites = [make_kite(hostname=f"host-{i % 7}") for i in range(300)]
    jobs = [gevent.spawn(pg.upsert, k, f"http://10.0.0.3:{i}/kite", key_id, LONG_TTL) for i, k in enumerate(kites)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    assert pg._upserts.calls == 300 and pg._upserts.round_trips <= 10, pg._upserts.round_trips
    assert observer.count() == 300
    recorder.wait_for(lambda events: len(events) >= 300)

    # A rewrite in the same batch as new kites: the changed identity's events, nothing for the unchanged.
    moved = KiteIdentity(**{**kites[0].to_wire(), "hostname": "elsewhere"})
    newcomer = make_kite()
    jobs = [gevent.spawn(pg.upsert, moved, "http://10.0.0.3:0/kite", key_id, LONG_TTL),
            gevent.spawn(pg.upsert, kites[1], "http://10.0.0.3:1/kite", key_id, LONG_TTL),
            gevent.spawn(pg.upsert, newcomer, "http://new/kite", key_id, LONG_TTL)]
    gevent.joinall(jobs, timeout=30, raise_error=True)
    recorder.wait_for(lambda events: len(events) >= 303)
    gevent.sleep(0.3)
    assert sorted(recorder.actions()[300:]) == sorted([(DEREGISTER, kites[0].id), (REGISTER, moved.id),
                                                       (REGISTER, newcomer.id)])
    assert [e.kite.hostname for e in recorder.events[300:] if e.kite.id == moved.id] == ["host-0", "elsewhere"]

    missing = str(uuid.uuid4())
    refreshes = [gevent.spawn(pg.refresh, k, LONG_TTL) for k in kites[2:200]] + [gevent.spawn(pg.refresh, missing, 5)]
    lookups = [gevent.spawn(pg.get_by_id, k.id) for k in kites[2:200]] + [gevent.spawn(pg.get_by_id, missing)]
    gevent.joinall(refreshes + lookups, timeout=30, raise_error=True)
    assert [job.value for job in refreshes] == [True] * 198 + [False]
    assert [job.value for job in lookups[:-1]] == [KiteRecord(k, f"http://10.0.0.3:{i}/kite", key_id)
                                                   for i, k in enumerate(kites[2:200], 2)]
    assert lookups[-1].value is None
    assert pg._refreshes.round_trips <= 5 and pg._lookups.round_trips <= 5


def test_a_bad_write_in_a_shared_transaction_fails_alone(pg: PostgresStorage, key_id: str) -> None:
    kites = [make_kite() for _ in range(20)]
    unknown_key = str(uuid.uuid4())  # no such key pair: the foreign key refuses this one
    jobs = [gevent.spawn(pg.upsert, k, f"http://{i}/kite", unknown_key if i == 7 else key_id, LONG_TTL)
            for i, k in enumerate(kites)]
    gevent.joinall(jobs, timeout=30)
    assert isinstance(jobs[7].exception, InvalidKiteError) and "stored key pair" in str(jobs[7].exception)
    assert all(job.successful() for i, job in enumerate(jobs) if i != 7)
    assert {r.kite.id for r in pg.get({"username": "alice"})} == {k.id for i, k in enumerate(kites) if i != 7}
    with pytest.raises(InvalidKiteError):  # and alone too
        pg.upsert_many([KiteRecord(kites[7], "http://7/kite", unknown_key), KiteRecord(kites[0], "http://0/kite",
                                                                                       key_id)], LONG_TTL)
    assert pg.get_by_id(kites[0].id).url == "http://0/kite" and pg.get_by_id(kites[7].id) is None


def test_new_kites_are_one_statement_and_existing_ones_one_transaction(opened: Opener, key_id: str,
                                                                      monkeypatch) -> None:
    """A batch of registrations is a single round trip (INSERT and NOTIFY in one statement, no
    BEGIN/COMMIT); in a batch mixing new and existing kites only the existing ones take the
    transaction. Watchers get every kite's events once, large batches split over notifications,
    and a kite too large to announce is still stored."""
    from kontrol.storage import postgres

    pg, observer = opened(), opened()
    recorder = Recorder()
    observer.watch({"username": "alice"}, recorder)
    statements: list[str] = []  # the writes' statements, by name
    names = {postgres._INSERT_NEW_KITES: "INSERT+NOTIFY", postgres._UPDATE_KITES: "UPDATE",
             postgres._INSERT_KITES: "INSERT", postgres._NOTIFY: "NOTIFY", "BEGIN": "BEGIN", "COMMIT": "COMMIT"}
    real_run, real_execute = postgres.Connection.run, postgres.Connection.execute

    def run(self, sql, **params):
        statements.extend([names[sql]] if sql in names else [])
        return real_run(self, sql, **params)

    def execute(self, sql):
        statements.extend([names[sql]] if sql in names else [])
        return real_execute(self, sql)

    monkeypatch.setattr(postgres.Connection, "run", run)
    monkeypatch.setattr(postgres.Connection, "execute", execute)

    # 60 kites with URLs of 600 characters: their REGISTER events need several notifications;
    # one with a 10,000-character URL fits in none.
    kites = [make_kite(hostname=f"batch-{i}") for i in range(61)]
    urls = [f"http://10.0.0.4:{i}/{'p' * 600}" for i in range(60)] + [f"http://10.0.0.4/{'q' * 10_000}"]
    # One batch, as the group commit makes it (upsert_many's first call would go alone).
    pg._write_kites([(KiteRecord(k, u, key_id), LONG_TTL) for k, u in zip(kites, urls, strict=True)])
    assert statements == ["INSERT+NOTIFY"], statements
    stored = {r.kite.id: r.url for r in pg.get({"username": "alice"})}
    assert stored == {k.id: u for k, u in zip(kites, urls, strict=True)}
    recorder.wait_for(lambda events: len(events) >= 60)
    gevent.sleep(0.3)
    assert sorted(recorder.actions()) == sorted((REGISTER, k.id) for k in kites[:60])

    # Two existing kites (one moved, one unchanged) and a new one, in one batch.
    statements.clear()
    moved = KiteIdentity(**{**kites[0].to_wire(), "hostname": "moved"})
    newcomer = make_kite(hostname="newcomer")
    pg._write_kites([(KiteRecord(moved, urls[0], key_id), LONG_TTL), (KiteRecord(kites[1], urls[1], key_id), LONG_TTL),
                     (KiteRecord(newcomer, "http://new/kite", key_id), LONG_TTL)])
    assert statements == ["INSERT+NOTIFY", "BEGIN", "UPDATE", "NOTIFY", "COMMIT"], statements
    recorder.wait_for(lambda events: len(events) >= 63)
    gevent.sleep(0.3)
    assert sorted(recorder.actions()[60:]) == sorted([(REGISTER, newcomer.id), (DEREGISTER, kites[0].id),
                                                      (REGISTER, moved.id)])
    assert pg.get_by_id(moved.id) == KiteRecord(moved, urls[0], key_id)


def test_events_are_split_into_notifications_that_fit() -> None:
    events = [shared_event(i) for i in range(100)]
    payloads = event_payloads(events)
    assert len(payloads) > 1 and all(len(p.encode()) < MAX_PAYLOAD for p in payloads)
    assert [e for p in payloads for e in decode_events(p)] == events
    huge = shared_event(0, url="http://x/" + "a" * 10_000)
    assert event_payloads([huge]) == []  # too large to announce: left out (with a warning)
    assert decode_events("not json") == []


def shared_event(i: int, url: str = ""):
    from kontrol.storage import KiteEvent

    return KiteEvent(REGISTER, make_kite(hostname=f"h{i}"), url or f"http://{i}/kite", str(uuid.uuid4()))


# -- the pool -------------------------------------------------------------------------------


def connections(admin, url: str) -> int:
    """Our storage's connections to the test database, as the server counts them."""
    [[n]] = admin.run(
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = :db AND usename = :user AND application_name = 'kontrol'",
        db=database_of(url),
        user=POSTGRES_USER,
    )
    return int(n)


def test_a_small_pool_serves_many_callers_with_few_connections(opened: Opener, url: str, admin) -> None:
    pg = opened(pool_size=2)
    key = pg.add_key_pair("", *pems()).id
    seen: list[int] = []
    running = True

    def sample() -> None:
        while running:
            seen.append(connections(admin, url))
            gevent.sleep(0.002)

    sampler = gevent.spawn(sample)
    kites = [make_kite(hostname=f"host-{i}") for i in range(50)]
    jobs = [gevent.spawn(pg.upsert, k, f"http://{i}/kite", key, LONG_TTL) for i, k in enumerate(kites)]
    gevent.joinall(jobs, raise_error=True)
    running = False
    sampler.join()
    assert all(job.successful() for job in jobs)
    assert pg.count() == 50
    assert seen and 1 <= max(seen) <= 2, seen


def test_callers_wait_for_a_free_connection_then_give_up(opened: Opener, postgres_server: PostgresServer,
                                                        url: str) -> None:
    pg = opened(pool_size=1, pool_timeout=0.3, timeout=2.0)
    pg.count()
    with postgres_server.admin(database_of(url)) as locker:
        locker.run("BEGIN")
        locker.run("LOCK TABLE kite.kite IN ACCESS EXCLUSIVE MODE")
        blocked = gevent.spawn(pg.count)  # holds the only connection, waiting for the lock
        gevent.sleep(0.1)
        started = time.monotonic()
        with pytest.raises(StorageUnavailableError, match="all 1 connections busy"):
            pg.get_by_id(str(uuid.uuid4()))
        assert 0.25 < time.monotonic() - started < 1.5
        locker.run("COMMIT")
    assert blocked.get(timeout=5) == 0


def test_a_slow_operation_times_out_and_its_connection_is_replaced(opened: Opener,
                                                                   postgres_server: PostgresServer,
                                                                   url: str, admin) -> None:
    pg = opened(pool_size=1, timeout=0.5)
    pg.count()
    with postgres_server.admin(database_of(url)) as locker:
        locker.run("BEGIN")
        locker.run("LOCK TABLE kite.kite IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(StorageUnavailableError, match="no answer within 0.5 s"):
            pg.count()
        locker.run("COMMIT")
    assert pg.count() == 0
    wait_until(lambda: connections(admin, url) == 1)


def test_broken_connections_are_dropped_and_replaced(opened: Opener, url: str, admin) -> None:
    pg = opened(pool_size=3)
    gevent.joinall([gevent.spawn(pg.count) for _ in range(3)], raise_error=True)
    admin.run(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :db AND application_name = 'kontrol'",
        db=database_of(url),
    )
    wait_until(lambda: connections(admin, url) == 0)
    key = pg.add_key_pair("", *pems()).id  # each call gets through on a fresh connection
    for _ in range(3):
        pg.upsert(make_kite(), "http://x/kite", key)
    assert pg.count() == 3


def test_an_unreachable_server_is_unavailable() -> None:
    with open_storage("postgres://kontrol:x@127.0.0.1:1/kontrol", timeout=1) as pg:  # nothing listens on port 1
        for call in (
            lambda: pg.get({"username": "alice"}),
            lambda: pg.upsert(make_kite(), "http://x/kite", str(uuid.uuid4())),
            lambda: pg.add_key_pair("", *pems()),
            pg.ping,
        ):
            with pytest.raises(StorageUnavailableError, match="cannot connect"):
                call()
        with pytest.raises(StorageUnavailableError):
            pg.watch({"username": "alice"}, Recorder())


def test_a_wrong_password_is_an_error_not_an_outage(postgres_server: PostgresServer, url: str) -> None:
    with pytest.raises(PostgresError, match="password authentication failed") as e:
        open_storage(url.replace(POSTGRES_PASSWORD, "wrong"))
    assert not isinstance(e.value, StorageUnavailableError) and e.value.code == "28P01"


# -- settings -------------------------------------------------------------------------------


def test_settings_from_urls_and_the_go_variables() -> None:
    env = {"KONTROL_POSTGRES_USERNAME": "kontrolapplication", "KONTROL_POSTGRES_DBNAME": "koding"}
    s = PostgresSettings.from_url("postgres://u:p%40ss@db.example:6543/kites", env)
    assert (s.user, s.password, s.host, s.port, s.database, s.connect_timeout) == (
        "u", "p@ss", "db.example", 6543, "kites", 20.0)
    assert "p@ss" not in repr(s) and str(s) == "postgres://u@db.example:6543/kites"
    for bare in ("postgres", "postgres://", "postgresql", "postgresql://"):
        s = PostgresSettings.from_url(bare, env)
        assert (s.user, s.password, s.host, s.port, s.database) == (
            "kontrolapplication", None, "localhost", 5432, "koding")
    full = {**env, "KONTROL_POSTGRES_HOST": "10.0.0.5", "KONTROL_POSTGRES_PORT": "5433",
            "KONTROL_POSTGRES_PASSWORD": "secret", "KONTROL_POSTGRES_CONNECTTIMEOUT": "3"}
    s = PostgresSettings.from_url("postgresql://", full)
    assert (s.host, s.port, s.password, s.connect_timeout) == ("10.0.0.5", 5433, "secret", 3.0)
    s = PostgresSettings.from_url("postgres://other@/otherdb", full)  # the URL wins, the variables fill in
    assert (s.user, s.database, s.host, s.port, s.password) == ("other", "otherdb", "10.0.0.5", 5433, "secret")
    with pytest.raises(ValueError, match="KONTROL_POSTGRES_USERNAME"):
        PostgresSettings.from_url("postgres://", {"KONTROL_POSTGRES_DBNAME": "koding"})
    with pytest.raises(ValueError, match="KONTROL_POSTGRES_DBNAME"):
        PostgresSettings.from_url("postgres://u@localhost", {})
    assert PostgresSettings.from_url("postgres://u@h/d?sslmode=disable", {}).database == "d"  # Go's one mode
    with pytest.raises(ValueError, match="not supported"):
        PostgresSettings.from_url("postgres://u@h/d?sslmode=require", {})
    with pytest.raises(ValueError, match="KONTROL_POSTGRES_PORT"):
        PostgresSettings.from_url("postgres", {**env, "KONTROL_POSTGRES_PORT": "forty"})


def test_open_storage_by_name_and_variables(postgres_server: PostgresServer, url: str, monkeypatch,
                                            tmp_path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KONTROL_POSTGRES_HOST", "127.0.0.1")
    monkeypatch.setenv("KONTROL_POSTGRES_PORT", str(postgres_server.port))
    monkeypatch.setenv("KONTROL_POSTGRES_USERNAME", POSTGRES_USER)
    monkeypatch.setenv("KONTROL_POSTGRES_PASSWORD", POSTGRES_PASSWORD)
    monkeypatch.setenv("KONTROL_POSTGRES_DBNAME", database_of(url))
    with open_storage("postgres") as a, open_storage(url.replace("postgres://", "postgresql://")) as b:
        assert isinstance(a, PostgresStorage) and isinstance(b, PostgresStorage)
        pair = a.add_key_pair("", *pems())
        assert b.get_key_pair(pair.id) == pair
    assert not (tmp_path / "postgres").exists()  # not taken for a sqlite file name


# -- outages --------------------------------------------------------------------------------


@pytest.fixture
def restartable(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, for a test that stops it: always running again afterwards."""
    try:
        yield postgres_server
    finally:
        if postgres_server.process is None:
            postgres_server.start()


def _works(storage: PostgresStorage) -> bool:
    try:
        storage.ping()
    except StorageUnavailableError:
        return False
    return True


def test_storage_and_watch_recover_after_a_server_restart(restartable: PostgresServer, opened: Opener) -> None:
    storage, other = opened(timeout=2), opened(timeout=2)
    key = storage.add_key_pair("", *pems()).id
    recorder = Recorder()
    storage.watch({"username": "alice"}, recorder)
    before = make_kite()
    storage.upsert(before, "http://b/kite", key, ttl=LONG_TTL)
    recorder.wait_for(lambda events: len(events) == 1)

    restartable.stop()  # a clean shutdown: the UNLOGGED table keeps its rows
    with pytest.raises(StorageUnavailableError):
        storage.get({"username": "alice"})
    with pytest.raises(StorageUnavailableError):
        storage.upsert(make_kite(), "http://x/kite", key)
    restartable.start()
    wait_until(lambda: _works(storage), 20)
    assert [r.kite.id for r in storage.get({"username": "alice"})] == [before.id]

    # The listener reconnected (after its backoff): it sees this instance's and another's writes.
    wait_until(lambda: _listening(restartable, storage), 20)
    mine, theirs = make_kite(), make_kite()
    storage.upsert(mine, "http://m/kite", key)
    other.upsert(theirs, "http://t/kite", key)
    recorder.wait_for(lambda events: len(events) >= 3, 20)
    assert recorder.actions()[1:] == [(REGISTER, mine.id), (REGISTER, theirs.id)]


def _listening(server: PostgresServer, storage: PostgresStorage) -> bool:
    with server.admin() as db:
        [[n]] = db.run("SELECT count(*) FROM pg_stat_activity WHERE datname = :db AND application_name = :name",
                       db=storage.settings.database, name=LISTENER_NAME)
    return int(n) >= 1


def test_a_heartbeat_the_storage_cannot_check_is_answered_pong_then_decided(restartable: PostgresServer,
                                                                              opened: Opener) -> None:
    """A heartbeat of a kite this Kontrol does not know, while the storage is down: no ``registeragain``
    (a wave of registrations into a failing storage); once it is back, an unknown kite is told."""
    kontrol = start_kontrol(opened(timeout=1, pool_timeout=1))
    beat = f"http://127.0.0.1:{kontrol.kite.port}/heartbeat"
    unknown = str(uuid.uuid4())
    try:
        assert requests.get(beat, params={"id": unknown}, timeout=5).text == "registeragain"
        restartable.stop()
        assert requests.get(beat, params={"id": unknown}, timeout=10).text == "pong"
        assert unknown not in kontrol.registry  # not taken over: asked again at the next heartbeat
        restartable.start()
        wait_until(lambda: requests.get(beat, params={"id": unknown}, timeout=10).text == "registeragain", 30)
    finally:
        kontrol.close()


def test_a_crash_empties_the_kites_and_the_registry_writes_them_back(restartable: PostgresServer,
                                                                      opened: Opener) -> None:
    """kite.kite is UNLOGGED (as in Go): a server crash empties it; the key pairs survive, and
    Kontrol's registry puts every live kite back at its next refresh."""
    storage, observer = opened(timeout=2), opened(timeout=2)
    key = storage.add_key_pair("", *pems()).id
    registry = Registry(storage, heartbeat_interval=60, heartbeat_delay=600, update_interval=2, key_ttl=30)
    kites = [make_kite(hostname=f"host-{i % 10}") for i in range(200)]
    try:
        registry.register_many([(k, f"http://10.0.0.1:{i}/kite", key) for i, k in enumerate(kites)], WEBSOCKET)
        registry.start()
        assert observer.count() == 200
        with restartable.admin() as db:  # the test server commits asynchronously: make what committed durable
            db.run("CHECKPOINT")

        restartable.stop(signal.SIGQUIT)  # an immediate shutdown: crash recovery on the next start
        restartable.start()
        wait_until(lambda: _works(observer), 20)
        assert observer.get_key_pair(key).id == key
        wait_until(lambda: observer.count() == 200, 30)
        assert {r.kite.id for r in observer.get({"username": "alice"})} == {k.id for k in kites}
    finally:
        registry.stop()


# -- lifecycle ------------------------------------------------------------------------------
# (Kontrol itself on postgres, and the kontrol command configured the Go way, KONTROL_STORAGE=postgres
# and KONTROL_POSTGRES_*, are the shared tests of test_kontrol.py, test_kontrol_kites.py, test_workers.py
# and test_cli.py, which run on every backend of conftest.BACKENDS.)


def test_closed_storage_refuses_calls(pg: PostgresStorage) -> None:
    pg.close()
    pg.close()
    with pytest.raises(StorageError, match="closed"):
        pg.count()
