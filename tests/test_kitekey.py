"""kite.key: location, atomic 0600 writes, self-verifying parse (PROTOCOL.md §5.1, checklist 40)."""

from __future__ import annotations

import os
import stat

import pytest

from kite import kitekey, testkeys, testutil
from kite.kitekey import KiteKeyError, KiteKeyNotFoundError


@pytest.fixture(autouse=True)
def kite_home(tmp_path, monkeypatch):
    """Never touch the real ~/.kite: KITE_HOME is a fresh directory."""
    home = tmp_path / "kitehome"
    monkeypatch.setenv("KITE_HOME", str(home))
    return home


def test_key_path_uses_kite_home_else_dot_kite(kite_home, tmp_path, monkeypatch):
    assert kitekey.kite_home() == str(kite_home)
    assert kitekey.key_path() == str(kite_home / "kite.key")
    monkeypatch.delenv("KITE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert kitekey.key_path() == str(tmp_path / "home" / ".kite" / "kite.key")


def test_write_creates_private_dir_and_file_atomically(kite_home):
    key = testutil.new_kite_key("alice")
    path = kitekey.write(key + "\n")
    assert path == kitekey.key_path()
    assert stat.S_IMODE(os.stat(kite_home).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert kitekey.read() == key
    # Replacing leaves no temporary files behind and keeps the mode.
    other = testutil.new_kite_key("bob")
    kitekey.write(other)
    assert kitekey.read() == other
    assert os.listdir(kite_home) == ["kite.key"]
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_read_trims_whitespace(kite_home):
    key = testutil.new_kite_key("alice")
    kite_home.mkdir()
    (kite_home / "kite.key").write_text(f"\n  {key}  \n\n")
    assert kitekey.read() == key
    assert kitekey.parse().username == "alice"


def test_missing_file_is_a_clear_error_naming_the_path(kite_home):
    with pytest.raises(KiteKeyNotFoundError) as e:
        kitekey.read()
    assert str(kite_home / "kite.key") in str(e.value)
    assert isinstance(e.value, FileNotFoundError) and isinstance(e.value, KiteKeyError)
    with pytest.raises(KiteKeyNotFoundError):
        kitekey.parse()


def test_empty_and_malformed_files_name_the_path(kite_home):
    kite_home.mkdir()
    path = kite_home / "kite.key"
    path.write_text("   \n")
    with pytest.raises(KiteKeyError, match=f"kite.key at {path} is empty"):
        kitekey.read()
    for garbage in ("not a jwt", "a.b.c", "eyJhbGciOiJSUzI1NiJ9.e30"):
        path.write_text(garbage)
        with pytest.raises(KiteKeyError) as e:
            kitekey.parse()
        assert str(path) in str(e.value) and "invalid" in str(e.value)


def test_parse_self_verifies_and_exposes_the_claims():
    key = testutil.new_kite_key("alice", kontrol_user="koding", kontrol_url="https://kontrol.example.com/kite")
    parsed = kitekey.parse(key)
    assert parsed.raw == key
    assert parsed.username == "alice"
    assert parsed.kontrol_user == "koding"
    assert parsed.kontrol_url == "https://kontrol.example.com/kite"
    assert parsed.kontrol_key == testkeys.public_pem()
    assert len(parsed.id) == 36


@pytest.mark.parametrize(
    "make_key, reason",
    [
        # signed by another key than the kontrolKey it carries
        (lambda: testutil.new_kite_key("alice", key_pair=testkeys.other_key_pair(),
                                       kontrol_key=testkeys.public_pem()), "signature is invalid"),
        (lambda: testutil.new_kite_key("alice", kontrol_key=""), "no kontrol key found"),
        (lambda: testutil.new_kite_key("alice", ttl=-60), "token is expired by 1m"),
        (lambda: testutil.sign({"sub": "alice", "kontrolKey": testkeys.public_pem()}, algorithm="RS512"),
         "invalid signing method"),
    ],
    ids=["foreign-signature", "no-kontrol-key", "expired", "rs512"],
)
def test_parse_refuses_keys_that_do_not_self_verify(make_key, reason):
    with pytest.raises(KiteKeyError, match=reason):
        kitekey.parse(make_key())


def test_parse_file(tmp_path):
    path = testutil.write_kite_key(str(tmp_path / "elsewhere"), "carol")
    assert kitekey.parse_file(path).username == "carol"
