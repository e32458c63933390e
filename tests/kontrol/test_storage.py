"""The storage contract: every backend (memory, sqlite, etcd v3, etcd v2, postgres) passes the same tests.

Kites are registered as Kontrol registers them: UUID ids, under the id of a stored key pair
(the ``key_id``/``key_ids`` fixtures). Postgres, in the Go schema, takes nothing else;
:func:`test_a_kite_without_a_stored_key_pair` shows what the other backends do otherwise.
"""

from __future__ import annotations

import itertools
import uuid

import gevent
import pytest

from kite.wire.protocol import PATH_FIELDS, KiteIdentity
from kontrol.storage import (
    DEREGISTER,
    REGISTER,
    InvalidKiteError,
    InvalidQueryError,
    KeyPairDeletedError,
    KeyPairExistsError,
    KeyPairNotFoundError,
    KiteRecord,
    KontrolQuery,
    MemoryStorage,
    SqliteStorage,
    Storage,
    open_storage,
)

from .conftest import Backend, Recorder, add_key_pairs, wait_until

#: A TTL short enough to watch expire; etcd's minimum is 1 s with the test server's timings.
SHORT_TTL = 1
#: A TTL that never runs out during a test.
LONG_TTL = 300


def make_kite(**fields: str) -> KiteIdentity:
    values = {
        "username": "alice",
        "environment": "production",
        "name": "math",
        "version": "1.0.0",
        "region": "eu-west",
        "hostname": "worker-1",
        "id": str(uuid.uuid4()),
    }
    values.update(fields)
    return KiteIdentity(**values)


def ids(records: list[KiteRecord]) -> set[str]:
    return {r.kite.id for r in records}


def url_of(kite: KiteIdentity) -> str:
    return f"http://{kite.hostname}:6000/kite#{kite.id[:8]}"


# -- kites ------------------------------------------------------------------------------


def test_upsert_then_get_by_every_form(storage: Storage, key_id: str) -> None:
    kite = make_kite()
    storage.upsert(kite, "http://10.0.4.17:6000/kite", key_id, ttl=LONG_TTL)

    [record] = storage.get(KontrolQuery.from_kite(kite))
    assert record == KiteRecord(kite, "http://10.0.4.17:6000/kite", key_id)
    assert storage.get({"username": "alice"}) == [record]
    assert storage.get(kite) == [record]
    assert storage.get_by_id(kite.id) == record
    assert storage.count() == 1


def test_upsert_replaces_url_key_and_identity(storage: Storage, key_ids: list[str]) -> None:
    k1, k2 = key_ids
    kite = make_kite()
    storage.upsert(kite, "http://a/kite", k1, ttl=None)
    storage.upsert(kite, "http://b/kite", k2, ttl=None)
    assert storage.get_by_id(kite.id) == KiteRecord(kite, "http://b/kite", k2)

    moved = make_kite(id=kite.id, version="2.0.0")
    storage.upsert(moved, "http://b/kite", k2, ttl=None)
    assert storage.get({"username": "alice", "environment": "production", "name": "math", "version": "1.0.0"}) == []
    assert storage.get({"username": "alice"}) == [KiteRecord(moved, "http://b/kite", k2)]
    assert storage.count() == 1


def test_stored_kite_is_a_copy(storage: Storage, key_id: str) -> None:
    kite = make_kite()
    storage.upsert(kite, "http://a/kite", key_id)
    kite.name = "changed"
    assert storage.get_by_id(kite.id).kite.name == "math"


def test_empty_result_is_an_empty_list(storage: Storage) -> None:
    unknown = str(uuid.uuid4())  # a well-formed id that no kite has (postgres looks it up)
    assert storage.get({"username": "nobody"}) == []
    for kid in ("no-such-id", unknown):
        assert storage.get({"id": kid}) == []
        assert storage.get_by_id(kid) is None
    assert storage.count() == 0


def test_every_prefix_length(storage: Storage, key_id: str) -> None:
    # Two values per field: 2**6 kites (ids are unique), a shared first value everywhere.
    choices = {
        "username": ["alice", "bob"],
        "environment": ["production", "staging"],
        "name": ["math", "fs"],
        "version": ["1.0.0", "1.1.0"],
        "region": ["eu-west", "us-east"],
        "hostname": ["worker-1", "worker-2"],
    }
    kites = [make_kite(**dict(zip(choices, combo, strict=True))) for combo in itertools.product(*choices.values())]
    storage.upsert_many([KiteRecord(k, url_of(k), key_id) for k in kites], ttl=LONG_TTL)
    first = kites[0]
    for length in range(1, len(PATH_FIELDS) + 1):
        query = {f: getattr(first, f) for f in PATH_FIELDS[:length]}
        expected = {k.id for k in kites if all(getattr(k, f) == v for f, v in query.items())}
        assert ids(storage.get(query)) == expected, query
        assert len(expected) == (2 ** (len(choices) - length) if length <= len(choices) else 1)
    assert ids(storage.get({"username": "bob", "environment": "staging"})) == {
        k.id for k in kites if k.username == "bob" and k.environment == "staging"
    }


def test_prefix_fields_match_whole_values(storage: Storage, key_id: str) -> None:
    storage.upsert(a := make_kite(username="al"), "http://a/kite", key_id)
    storage.upsert(make_kite(username="alice"), "http://b/kite", key_id)
    storage.upsert(make_kite(username="al", environment="prod"), "http://c/kite", key_id)
    assert ids(storage.get({"username": "al", "environment": "production"})) == {a.id}


def test_id_only_query(storage: Storage, key_ids: list[str]) -> None:
    k1, k2 = key_ids
    kite, other = make_kite(), make_kite(username="bob")
    storage.upsert(kite, "http://a/kite", k1)
    storage.upsert(other, "http://b/kite", k2)
    assert storage.get({"id": kite.id}) == [KiteRecord(kite, "http://a/kite", k1)]
    assert storage.get(KontrolQuery(id=other.id)) == [KiteRecord(other, "http://b/kite", k2)]


def test_results_come_in_random_order(storage: Storage, key_id: str) -> None:
    kites = [make_kite(hostname=f"w{i}") for i in range(12)]
    storage.upsert_many([KiteRecord(k, url_of(k), key_id) for k in kites])
    orders = {tuple(r.kite.id for r in storage.get({"username": "alice"})) for _ in range(8)}
    assert len(orders) > 1


VERSIONS = ["0.9.0", "1.0.0", "1.2.0", "1.2.5", "1.3.0-beta", "2.0.0"]


@pytest.mark.parametrize(
    "constraint, expected",
    [
        (">= 1.0.0, < 2.0.0", {"1.0.0", "1.2.0", "1.2.5"}),
        ("~> 1.2", {"1.2.0", "1.2.5"}),
        ("~> 1.2.1", {"1.2.5"}),
        ("= 1.0.0", {"1.0.0"}),
        ("!= 1.0.0", {"0.9.0", "1.2.0", "1.2.5", "1.3.0-beta", "2.0.0"}),
        ("> 1.2.0", {"1.2.5", "2.0.0"}),
        ("< 1.0.0", {"0.9.0"}),
        ("<= 1.2.0", {"0.9.0", "1.0.0", "1.2.0"}),
        (">= 1.3.0-alpha", {"1.3.0-beta", "2.0.0"}),
    ],
)
def test_version_constraints(storage: Storage, key_id: str, constraint: str, expected: set[str]) -> None:
    storage.upsert_many([KiteRecord(make_kite(version=v), "http://x/kite", key_id) for v in VERSIONS])
    storage.upsert(make_kite(name="other", version="1.0.0"), "http://y/kite", key_id)
    query = {"username": "alice", "environment": "production", "name": "math", "version": constraint}
    assert {r.kite.version for r in storage.get(query)} == expected


def test_constraint_then_string_prefix_of_region_hostname_id(storage: Storage, key_id: str) -> None:
    west = make_kite(region="eu-west", hostname="worker-1")
    central = make_kite(region="eu-central", hostname="worker-2", version="1.5.0")
    us = make_kite(region="us-east")
    old = make_kite(region="eu-west", version="0.1.0")
    for k in (west, central, us, old):
        storage.upsert(k, url_of(k), key_id)
    base = {"username": "alice", "environment": "production", "name": "math", "version": ">= 1.0"}
    # After a constraint, region/hostname/id are a plain string prefix, as in Go: "eu" matches both.
    assert ids(storage.get({**base, "region": "eu"})) == {west.id, central.id}
    assert ids(storage.get({**base, "region": "eu-west", "hostname": "worker"})) == {west.id}
    assert ids(storage.get({**base, "region": "eu-west", "hostname": "worker-1", "id": west.id[:4]})) == {west.id}
    # Without a constraint, every field must be equal.
    assert storage.get({**base, "version": "1.0.0", "region": "eu"}) == []
    # A plain version is an exact match, not a constraint ("1.0" is not "1.0.0").
    assert storage.get({**base, "version": "1.0"}) == []


@pytest.mark.parametrize(
    "query, message",
    [
        ({}, "Empty username field"),
        ({"environment": "production"}, "Empty username field"),
        ({"username": "alice", "name": "math"}, "Invalid query. Query option is not set: environment"),
        ({"username": "alice", "environment": "p", "version": "1.0.0"}, "Invalid query. Query option is not set: name"),
        ({"username": "alice", "id": "x"}, "Invalid query. Query option is not set: hostname"),
        (
            {"username": "a", "environment": "p", "name": "n", "version": "bogus"},
            "Malformed constraint: bogus",
        ),
        ({"username": "a/b"}, "Field \"username\" must not contain '/'"),
    ],
)
def test_query_errors(storage: Storage, query: dict, message: str) -> None:
    with pytest.raises(InvalidQueryError) as e:
        storage.get(query)
    assert str(e.value) == message


@pytest.mark.parametrize("field", PATH_FIELDS)
def test_invalid_kites_are_rejected(storage: Storage, key_id: str, field: str) -> None:
    with pytest.raises(InvalidKiteError, match=f"^Empty Kite field: {field}$"):
        storage.upsert(make_kite(**{field: ""}), "http://x/kite", key_id)
    with pytest.raises(InvalidKiteError, match=f"^Field \"{field}\" must not contain '/'$"):
        storage.upsert(make_kite(**{field: "a/b"}), "http://x/kite", key_id)
    assert storage.count() == 0


def test_bad_arguments(storage: Storage, key_id: str) -> None:
    with pytest.raises(InvalidKiteError, match="empty url"):
        storage.upsert(make_kite(), "", key_id)
    for ttl in (0, -1, float("nan"), "10"):
        with pytest.raises(ValueError):
            storage.upsert(make_kite(), "http://x/kite", key_id, ttl=ttl)
    with pytest.raises(InvalidKiteError):
        storage.delete("")


def test_delete(storage: Storage, key_id: str) -> None:
    a, b = make_kite(), make_kite()
    storage.upsert(a, "http://a/kite", key_id, ttl=LONG_TTL)
    storage.upsert(b, "http://b/kite", key_id)
    assert storage.delete(a) is True
    assert storage.delete(a) is False
    assert storage.delete(b.id) is True
    assert storage.get({"username": "alice"}) == []
    assert storage.get_by_id(a.id) is None
    assert storage.count() == 0
    assert storage.delete("never-registered") is False
    assert storage.delete(str(uuid.uuid4())) is False


def test_refresh(storage: Storage, key_id: str) -> None:
    kite = make_kite()
    assert storage.refresh(kite, LONG_TTL) is False
    storage.upsert(kite, "http://a/kite", key_id, ttl=SHORT_TTL)
    assert storage.refresh(kite, LONG_TTL) is True  # a new TTL
    assert storage.refresh(kite.id, LONG_TTL) is True  # the same TTL again
    gevent.sleep(SHORT_TTL + 0.5)
    assert ids(storage.get({"username": "alice"})) == {kite.id}


def test_ttl_expiry_and_permanent_kites(storage: Storage, key_ids: list[str]) -> None:
    k, other = key_ids
    recorder = Recorder()
    storage.watch({"username": "alice"}, recorder)
    short, permanent, made_permanent = make_kite(), make_kite(), make_kite()
    storage.upsert(short, "http://short/kite", k, ttl=SHORT_TTL)
    storage.upsert(permanent, "http://permanent/kite", other, ttl=None)
    storage.upsert(made_permanent, "http://made/kite", other, ttl=SHORT_TTL)
    assert storage.refresh(made_permanent, None) is True

    wait_until(lambda: storage.get_by_id(short.id) is None)
    assert ids(storage.get({"username": "alice"})) == {permanent.id, made_permanent.id}
    assert storage.get({"id": short.id}) == []
    assert storage.count() == 2
    assert storage.refresh(short, LONG_TTL) is False
    recorder.wait_for(lambda events: (DEREGISTER, short.id) in [(e.action, e.kite.id) for e in events])
    gone = [e for e in recorder.events if e.action == DEREGISTER]
    assert [(e.kite, e.url, e.key_id) for e in gone] == [(short, "http://short/kite", k)]


#: Characters that array, JSON, SQL and URL encodings each treat specially.
AWKWARD = "a \"quoted\", {braced} 'single' \\back\\slash, NULL; ü 漢 \U0001f680 %20 &amp;\t"


def test_awkward_characters_survive_every_path(storage: Storage, key_id: str) -> None:
    """Fields and URLs full of quotes, backslashes, commas, braces and non-ASCII come back as they
    went in: written alone and in a batch, looked up by id and by query, refreshed, and announced."""
    recorder = Recorder()
    storage.watch({"username": AWKWARD}, recorder)
    fields = {f: f"{AWKWARD}{f}" for f in ("username", "environment", "name", "region", "hostname")}
    fields["username"] = AWKWARD
    alone = make_kite(**fields)
    batch = [make_kite(**{**fields, "hostname": f"{AWKWARD}{n}"}) for n in range(3)]
    url = f"http://h/kite?q={AWKWARD}"
    storage.upsert(alone, url, key_id, ttl=LONG_TTL)
    storage.upsert_many([KiteRecord(k, url + k.hostname, key_id) for k in batch], ttl=LONG_TTL)
    assert storage.get_by_id(alone.id) == KiteRecord(alone, url, key_id)
    found = storage.get({"username": AWKWARD, "environment": fields["environment"]})
    assert {r.kite.id: r.kite for r in found} == {k.id: k for k in (alone, *batch)}
    assert storage.get(alone) == [KiteRecord(alone, url, key_id)]
    assert storage.refresh(alone, LONG_TTL)
    moved = make_kite(**{**fields, "id": alone.id, "hostname": AWKWARD + "moved"})
    storage.upsert(moved, url + "moved", key_id, ttl=LONG_TTL)  # the update path: old and new rows
    assert storage.get_by_id(alone.id) == KiteRecord(moved, url + "moved", key_id)
    assert storage.delete(moved)
    recorder.wait_for(lambda events: len(events) >= 7)
    seen = [(e.action, e.kite, e.url) for e in recorder.events]
    assert seen[0] == (REGISTER, alone, url)
    in_batch = sorted(seen[1:4], key=lambda e: e[1].id)  # a batch's order is the backend's
    assert in_batch == [(REGISTER, k, url + k.hostname) for k in sorted(batch, key=lambda k: k.id)]
    assert seen[4:] == [(DEREGISTER, alone, url), (REGISTER, moved, url + "moved"),
                        (DEREGISTER, moved, url + "moved")]


def test_watch_register_and_deregister(storage: Storage, key_ids: list[str]) -> None:
    k1, other = key_ids
    recorder = Recorder()
    watcher = storage.watch({"username": "alice", "environment": "production"}, recorder)
    kite = make_kite()
    storage.upsert(make_kite(environment="staging"), "http://elsewhere/kite", other)  # does not match
    storage.upsert(kite, "http://a/kite", k1, ttl=LONG_TTL)
    storage.upsert(kite, "http://a/kite", k1, ttl=LONG_TTL)  # unchanged: no event
    storage.refresh(kite, LONG_TTL)  # a refresh is not an event
    storage.upsert(kite, "http://b/kite", k1, ttl=LONG_TTL)  # new URL: REGISTER
    storage.delete(kite)
    recorder.wait_for(lambda events: len(events) >= 3)
    gevent.sleep(0.3)  # nothing else may arrive
    assert recorder.actions() == [(REGISTER, kite.id), (REGISTER, kite.id), (DEREGISTER, kite.id)]
    first, second, last = recorder.events
    assert (first.kite, first.url, first.key_id) == (kite, "http://a/kite", k1)
    assert second.url == "http://b/kite"
    assert (last.url, last.key_id) == ("http://b/kite", k1)
    assert first.to_wire() == {"action": REGISTER, "kite": kite.to_wire(), "url": "http://a/kite"}

    watcher.cancel()
    assert not watcher.active
    storage.upsert(make_kite(), "http://c/kite", other)
    gevent.sleep(0.3)
    assert len(recorder.events) == 3


def test_watch_identity_change_and_id_query(storage: Storage, key_id: str) -> None:
    kite = make_kite()
    by_id = Recorder()
    storage.watch({"id": kite.id}, by_id)
    storage.upsert(kite, "http://a/kite", key_id)
    moved = make_kite(id=kite.id, hostname="worker-9")
    storage.upsert(moved, "http://a/kite", key_id)
    by_id.wait_for(lambda events: len(events) >= 3)
    assert [(e.action, e.kite.hostname) for e in by_id.events] == [
        (REGISTER, "worker-1"),
        (DEREGISTER, "worker-1"),
        (REGISTER, "worker-9"),
    ]


def test_failing_callback_does_not_stop_the_watch(storage: Storage, key_id: str) -> None:
    seen = []

    def callback(event):
        seen.append(event)
        raise RuntimeError("callback bug")

    storage.watch({"username": "alice"}, callback)
    storage.upsert(make_kite(), "http://a/kite", key_id)
    storage.upsert(make_kite(), "http://b/kite", key_id)
    wait_until(lambda: len(seen) == 2)


def test_watch_rejects_bad_queries(storage: Storage) -> None:
    with pytest.raises(InvalidQueryError, match="Empty username field"):
        storage.watch({}, Recorder())


def test_watch_sees_other_instances(backend: Backend) -> None:
    if not backend.shared:
        pytest.skip("separate instances of this backend do not share data")
    watching, writing = backend.open(), backend.open()
    [key_id] = add_key_pairs(writing)
    recorder = Recorder()
    watching.watch({"username": "alice"}, recorder)
    kite, short = make_kite(), make_kite()
    writing.upsert(kite, "http://a/kite", key_id)
    writing.upsert(short, "http://s/kite", key_id, ttl=SHORT_TTL)
    writing.delete(kite.id)
    expected = [(REGISTER, kite.id), (REGISTER, short.id), (DEREGISTER, kite.id), (DEREGISTER, short.id)]
    recorder.wait_for(lambda events: len(events) >= 4)
    assert recorder.actions() == expected
    assert watching.get({"username": "alice"}) == []


def test_upsert_many_and_query_a_thousand(storage: Storage, key_id: str) -> None:
    kites = [make_kite(hostname=f"host-{i % 50}") for i in range(1000)]
    storage.upsert_many((KiteRecord(k, url_of(k), key_id) for k in kites), ttl=LONG_TTL)
    records = storage.get({"username": "alice", "environment": "production", "name": "math"})
    assert ids(records) == {k.id for k in kites}
    assert len(records) == 1000
    assert storage.count() == 1000


def test_concurrent_upserts(storage: Storage, key_id: str) -> None:
    kite = make_kite()
    jobs = [gevent.spawn(storage.upsert, kite, f"http://{i}/kite", key_id, LONG_TTL) for i in range(20)]
    gevent.joinall(jobs, raise_error=True)
    [record] = storage.get({"username": "alice"})
    assert record.url in {f"http://{i}/kite" for i in range(20)}
    assert storage.count() == 1


def test_a_kite_without_a_stored_key_pair(backend: Backend, storage: Storage, key_id: str) -> None:
    """Kontrol registers every kite under the id of a stored key pair. Given anything else (no key id,
    the default; an id that is not a UUID; a UUID of no stored pair), the backends genuinely differ:
    postgres keeps the Go schema, where ``kite.key_id`` is a NOT NULL ``uuid`` foreign key to
    ``kite.key`` (and the Go Kontrol refuses an empty key id too), so it refuses the kite, stores
    nothing and announces nothing; the other backends store the key id as given."""
    recorder = Recorder()
    storage.watch({"username": "alice"}, recorder)
    refused = backend.kind == "postgres"
    stored = []
    for key in ((), ("",), ("key-1",), (str(uuid.uuid4()),)):  # () leaves the key id out
        one, many = make_kite(), make_kite()
        if refused:
            with pytest.raises(InvalidKiteError, match="key (id|pair)"):
                storage.upsert(one, "http://one/kite", *key)
            with pytest.raises(InvalidKiteError, match="key (id|pair)"):
                storage.upsert_many([KiteRecord(many, "http://many/kite", *key)])
        else:
            storage.upsert(one, "http://one/kite", *key)
            storage.upsert_many([KiteRecord(many, "http://many/kite", *key)])
            stored += [KiteRecord(one, "http://one/kite", *key), KiteRecord(many, "http://many/kite", *key)]
    assert [storage.get_by_id(r.kite.id) for r in stored] == stored
    assert storage.count() == len(stored)
    # A kite under a stored pair, announced after every event of the kites above (if any).
    last = make_kite()
    storage.upsert(last, "http://last/kite", key_id)
    recorder.wait_for(lambda events: (REGISTER, last.id) in [(e.action, e.kite.id) for e in events])
    assert [(e.action, e.kite, e.url, e.key_id) for e in recorder.events] == [
        *((REGISTER, r.kite, r.url, r.key_id) for r in stored),
        (REGISTER, last, "http://last/kite", key_id),
    ]


# -- key pairs --------------------------------------------------------------------------

PUBLIC = "-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n-----END PUBLIC KEY-----"
PRIVATE = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEA\n-----END PRIVATE KEY-----"


def test_key_pairs(storage: Storage) -> None:
    pair = storage.add_key_pair("", f"\n  {PUBLIC}\n", f"{PRIVATE}\n\n")
    assert uuid.UUID(pair.id).version == 4
    assert (pair.public, pair.private, pair.deleted) == (PUBLIC, PRIVATE, False)
    assert storage.get_key_pair(pair.id) == pair
    assert storage.get_key_pair_by_public(PUBLIC + "\n") == pair

    second_id, third_id = str(uuid.uuid4()), str(uuid.uuid4())  # ids chosen by the caller
    second = storage.add_key_pair(second_id, PUBLIC.replace("MII", "XYZ"), PRIVATE.replace("MII", "XYZ"))
    assert second.id == second_id
    assert [p.id for p in storage.list_key_pairs()] == [second_id, pair.id]

    with pytest.raises(KeyPairExistsError):
        storage.add_key_pair(third_id, PUBLIC, "other private")
    with pytest.raises(KeyPairExistsError):
        storage.add_key_pair(second_id, "other public", "other private")

    storage.delete_key_pair(pair.id)
    storage.delete_key_pair(pair.id)  # deleting again keeps it deleted
    for lookup in (lambda: storage.get_key_pair(pair.id), lambda: storage.get_key_pair_by_public(PUBLIC)):
        with pytest.raises(KeyPairDeletedError) as e:
            lookup()
        assert str(e.value) == "key pair is removed"
        assert e.value.key_pair.id == pair.id
    assert [p.id for p in storage.list_key_pairs()] == [second_id]
    listed = storage.list_key_pairs(include_deleted=True)
    assert [p.id for p in listed] == [second_id, pair.id]
    assert listed[1].deleted_at >= listed[1].created_at


def test_missing_key_pairs(storage: Storage) -> None:
    unknown = str(uuid.uuid4())  # a well-formed id that no pair has (postgres looks it up)
    for lookup in (
        lambda: storage.get_key_pair("nope"),
        lambda: storage.get_key_pair(unknown),
        lambda: storage.get_key_pair_by_public("nope"),
        lambda: storage.delete_key_pair("nope"),
        lambda: storage.delete_key_pair(unknown),
    ):
        with pytest.raises(KeyPairNotFoundError) as e:
            lookup()
        assert str(e.value) == "no key pair found"
    assert storage.list_key_pairs(include_deleted=True) == []


# -- persistence and opening ------------------------------------------------------------


def test_data_survives_reopening(backend: Backend) -> None:
    if backend.kind == "memory":
        pytest.skip("memory storage forgets on close by design")
    first = backend.open()
    k1, k2 = add_key_pairs(first, 2)
    permanent, expiring = make_kite(), make_kite()
    first.upsert(permanent, "http://p/kite", k1)
    first.upsert(expiring, "http://e/kite", k2, ttl=LONG_TTL)
    pair = first.add_key_pair("", PUBLIC, PRIVATE)
    first.delete_key_pair(pair.id)
    first.close()

    second = backend.open()
    assert ids(second.get({"username": "alice"})) == {permanent.id, expiring.id}
    assert second.get_by_id(permanent.id) == KiteRecord(permanent, "http://p/kite", k1)
    with pytest.raises(KeyPairDeletedError):
        second.get_key_pair(pair.id)
    assert second.refresh(expiring, LONG_TTL) is True


def test_open_storage_names(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_storage("memory") as s:
        assert isinstance(s, MemoryStorage)
    with open_storage(str(tmp_path / "a.db")) as s:
        assert isinstance(s, SqliteStorage) and s.path == str(tmp_path / "a.db")
    with open_storage("sqlite:///relative.db") as s:  # SQLAlchemy's convention
        assert s.path == "relative.db"
    with open_storage(f"sqlite:///{tmp_path}/absolute.db") as s:
        assert s.path == f"{tmp_path}/absolute.db"
    with open_storage("sqlite://") as s:
        assert s.path == ":memory:"
    assert (tmp_path / "relative.db").exists() and (tmp_path / "absolute.db").exists()
    with pytest.raises(ValueError, match="unknown storage"):
        open_storage("redis://localhost")


def test_unreachable_etcd_is_unavailable() -> None:
    from kontrol.storage import StorageUnavailableError

    port = 1  # nothing listens on port 1 of the loopback
    for url in (f"etcd://127.0.0.1:{port}", f"etcd2://127.0.0.1:{port}"):
        with open_storage(url, timeout=1) as s:
            with pytest.raises(StorageUnavailableError):
                s.get({"username": "alice"})
            with pytest.raises(StorageUnavailableError):
                s.upsert(make_kite(), "http://x/kite")
