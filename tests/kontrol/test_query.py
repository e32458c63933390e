"""KontrolQuery validation and matching, go-version semantics, token audiences (pure code)."""

from __future__ import annotations

import pytest

from kite.wire.protocol import KiteIdentity
from kontrol.storage import InvalidQueryError, KontrolQuery, get_audience
from kontrol.storage.version import Constraints, Version, is_version

KITE = KiteIdentity(
    name="math",
    username="alice",
    id="6f1c2b8e-4a8d-4c1e-9f7a-0d3b5e2a9c11",
    environment="production",
    region="eu-west",
    version="1.2.3",
    hostname="worker-1",
)

# -- versions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, segments, pre, meta",
    [
        ("1.2.3", (1, 2, 3), "", ""),
        ("1.2", (1, 2, 0), "", ""),
        ("1", (1, 0, 0), "", ""),
        ("v1.0.0", (1, 0, 0), "", ""),
        ("1.2.3.4", (1, 2, 3, 4), "", ""),
        ("1.0.0-beta.1", (1, 0, 0), "beta.1", ""),
        ("1.0.0beta", (1, 0, 0), "beta", ""),
        ("1.0.0-1+build.7", (1, 0, 0), "1", "build.7"),
        ("1.0.0+meta", (1, 0, 0), "", "meta"),
    ],
)
def test_version_parse(text: str, segments: tuple, pre: str, meta: str) -> None:
    v = Version.parse(text)
    assert (v.segments, v.prerelease, v.metadata, v.original) == (segments, pre, meta, text)


@pytest.mark.parametrize("text", ["", "a.b.c", ">= 1.0", "1.0.0 ", " 1.0", "1..0", "1.0.0\n", "99999999999999999999"])
def test_not_versions(text: str) -> None:
    assert not is_version(text)
    with pytest.raises(ValueError):
        Version.parse(text)


@pytest.mark.parametrize(
    "a, b, result",
    [
        ("1.0.0", "1.0.0", 0),
        ("1.0", "1.0.0", 0),
        ("1.0.0.0", "1.0.0", 0),
        ("1.0.0", "1.0.1", -1),
        ("2.0.0", "1.9.9", 1),
        ("1.0.0-beta", "1.0.0", -1),
        ("1.0.0-alpha", "1.0.0-beta", -1),
        ("1.0.0-beta.2", "1.0.0-beta.11", -1),
        ("1.0.0-1", "1.0.0-beta", -1),
        ("1.0.0-beta", "1.0.0-beta.1", -1),
        ("1.0.0+a", "1.0.0+b", 0),
        ("1.2.3.1", "1.2.3", 1),
    ],
)
def test_version_compare(a: str, b: str, result: int) -> None:
    assert Version.parse(a).compare(Version.parse(b)) == result
    assert Version.parse(b).compare(Version.parse(a)) == -result


@pytest.mark.parametrize(
    "constraint, version, ok",
    [
        (">= 1.0.0, < 2.0.0", "1.5.0", True),
        (">= 1.0.0, < 2.0.0", "2.0.0", False),
        (">=1.0,<2", "1.0.0", True),
        ("1.2.3", "1.2.3", True),
        ("= 1.2.3", "1.2.4", False),
        ("!= 1.2.3", "1.2.4", True),
        ("> 1.0", "1.0.1", True),
        ("< 1.0", "0.9.9", True),
        ("<= 1.0", "1.0.0", True),
        ("~> 1.2", "1.9.0", True),
        ("~> 1.2", "2.0.0", False),
        ("~> 1.2", "1.1.9", False),
        ("~> 1.2.3", "1.2.9", True),
        ("~> 1.2.3", "1.3.0", False),
        ("~> 1", "5.0.0", True),
        # pre-releases only satisfy constraints on a pre-release of the same segments
        (">= 1.0.0", "1.1.0-beta", False),
        (">= 1.1.0-alpha", "1.1.0-beta", True),
        (">= 1.1.0-alpha", "1.2.0-beta", False),
        (">= 1.1.0-alpha", "1.2.0", True),
        ("~> 1.1.0-alpha", "1.1.0", False),
        ("= 1.0.0", "1.0.0-beta", False),
        ("!= 1.0.0", "1.0.0-beta", True),
        # an unparsable kite version satisfies nothing
        (">= 0.0.0", "latest", False),
    ],
)
def test_constraints(constraint: str, version: str, ok: bool) -> None:
    assert Constraints.parse(constraint).check(version) is ok


@pytest.mark.parametrize("text, bad", [("bogus", "bogus"), (">= 1.0, <", " <"), ("=> 1.0", "=> 1.0"), ("", "")])
def test_malformed_constraints(text: str, bad: str) -> None:
    with pytest.raises(ValueError) as e:
        Constraints.parse(text)
    assert str(e.value) == f"Malformed constraint: {bad}"


# -- queries ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        {"username": "alice"},
        {"username": "alice", "environment": "production", "name": "math"},
        {"username": "alice", "environment": "production", "name": "math", "version": "~> 1.0"},
        dict(KITE.to_wire()),
        {"id": "some-id"},
    ],
)
def test_valid_queries(query: dict) -> None:
    q = KontrolQuery.from_wire(query)
    assert q.validate() is q


@pytest.mark.parametrize(
    "query, message",
    [
        ({}, "Empty username field"),
        ({"name": "math", "id": "x"}, "Empty username field"),
        ({"username": "alice", "name": "math"}, "Invalid query. Query option is not set: environment"),
        # Go reports the empty field nearest before the offending one
        ({"username": "alice", "version": "1.0.0"}, "Invalid query. Query option is not set: name"),
        ({"username": "a", "environment": "e", "name": "n", "hostname": "h"}, "Invalid query. Query option is not set: "
         "region"),
        ({"username": "a", "environment": "e", "name": "n", "version": ">= x"}, "Malformed constraint: >= x"),
        ({"username": "a", "region": "x/y"}, "Field \"region\" must not contain '/'"),
    ],
)
def test_invalid_queries(query: dict, message: str) -> None:
    with pytest.raises(InvalidQueryError) as e:
        KontrolQuery.from_wire(query).validate()
    assert str(e.value) == message


def test_from_wire_ignores_extras_and_non_strings() -> None:
    q = KontrolQuery.from_wire({"username": "alice", "environment": 5, "force": True, "name": None})
    assert q == KontrolQuery(username="alice")
    assert q.to_wire() == {
        "username": "alice",
        "environment": "",
        "name": "",
        "version": "",
        "region": "",
        "hostname": "",
        "id": "",
    }
    assert KontrolQuery.coerce(KITE) == KontrolQuery.from_wire(KITE.to_wire())
    with pytest.raises(InvalidQueryError):
        KontrolQuery.from_wire(["alice"])
    with pytest.raises(TypeError):
        KontrolQuery.coerce("alice")


def test_scan_prefix() -> None:
    assert KontrolQuery(username="a", environment="e").scan_prefix() == ("a", "e")
    assert KontrolQuery.from_kite(KITE).scan_prefix() == tuple(
        getattr(KITE, f) for f in ("username", "environment", "name", "version", "region", "hostname", "id")
    )
    constrained = KontrolQuery(username="a", environment="e", name="n", version=">= 1", region="r")
    assert constrained.scan_prefix() == ("a", "e", "n")


@pytest.mark.parametrize(
    "query, ok",
    [
        ({"username": "alice"}, True),
        ({"username": "bob"}, False),
        ({"username": "alice", "environment": "production", "name": "math", "version": "1.2.3"}, True),
        ({"username": "alice", "environment": "production", "name": "math", "version": "1.2"}, False),
        ({"id": KITE.id}, True),
        ({"id": "other"}, False),
        (dict(KITE.to_wire()), True),
        ({**KITE.to_wire(), "hostname": "worker"}, False),
        ({"username": "alice", "environment": "production", "name": "math", "version": "~> 1.2"}, True),
        ({"username": "alice", "environment": "production", "name": "math", "version": "> 1.2.3"}, False),
        ({"username": "alice", "environment": "production", "name": "fs", "version": "~> 1.2"}, False),
        # the string-prefix rule after a constraint
        ({"username": "alice", "environment": "production", "name": "math", "version": ">= 1", "region": "eu"}, True),
        (
            {"username": "alice", "environment": "production", "name": "math", "version": ">= 1", "region": "eu-west",
             "hostname": "worker-1", "id": "6f1c"},
            True,
        ),
        ({"username": "alice", "environment": "production", "name": "math", "version": ">= 1", "region": "us"}, False),
    ],
)
def test_matches(query: dict, ok: bool) -> None:
    q = KontrolQuery.from_wire(query).validate()
    assert q.matches(KITE) is ok


@pytest.mark.parametrize(
    "query, audience",
    [
        ({"username": "alice", "environment": "production", "name": "math"}, "/alice/production/math"),
        ({"username": "alice", "environment": "production", "name": "math", "version": "1"}, "/alice/production/math"),
        ({"username": "alice", "name": "math"}, "/alice//math"),
        ({"username": "alice", "environment": "production"}, "/alice/production"),
        ({"username": "alice"}, "/alice"),
        ({"id": "x"}, "/"),
    ],
)
def test_get_audience(query: dict, audience: str) -> None:
    assert get_audience(KontrolQuery.from_wire(query)) == audience
