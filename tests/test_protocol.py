import pytest

from kite.wire.protocol import KiteIdentity, validate_name_version


def test_identity_wire_order_and_path():
    k = KiteIdentity("math", "alice", "id-1", "production", "eu-west", "1.0.0", "worker-1")
    assert list(k.to_wire()) == ["name", "username", "id", "environment", "region", "version", "hostname"]
    assert str(k) == "/alice/production/math/1.0.0/eu-west/worker-1/id-1"
    assert KiteIdentity.from_string(str(k)) == k


def test_from_string_short_and_long():
    k = KiteIdentity.from_string("/alice/production")
    assert (k.username, k.environment, k.name, k.id) == ("alice", "production", "", "")
    assert KiteIdentity.from_string("/a/b/c/d/e/f/g/h").id == "g/h"
    with pytest.raises(ValueError):
        KiteIdentity.from_string("alice")


def test_from_wire_tolerates_junk():
    assert KiteIdentity.from_wire(None) == KiteIdentity()
    assert KiteIdentity.from_wire({"name": 5, "username": "u"}).username == "u"


def test_validate_names_the_field():
    k = KiteIdentity("math", "alice", "id", "env", "region", "1.0.0", "")
    with pytest.raises(ValueError, match="Empty Kite field: hostname"):
        k.validate()
    k.hostname = "a/b"
    with pytest.raises(ValueError, match="Field \"hostname\" must not contain '/'"):
        k.validate()


@pytest.mark.parametrize("name, version", [("", "1.0.0"), ("m", "1.0"), ("m", "1.0.0.0"), ("m", "a.b.c")])
def test_name_version_checks(name, version):
    with pytest.raises(ValueError):
        validate_name_version(name, version)
