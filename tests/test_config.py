"""Config: Go's defaults, kite.key and KITE_* variables (PROTOCOL.md §9, checklist 40)."""

from __future__ import annotations

import pytest

from kite import Config, ConfigError, Kite, KiteKeyError, KiteKeyNotFoundError, testkeys, testutil
from kite.config import ENVIRONMENT_VARIABLES, parse_duration


@pytest.fixture(autouse=True)
def kite_home(tmp_path, monkeypatch):
    """Never touch the real ~/.kite, and start with no KITE_* variable set."""
    home = tmp_path / "kitehome"
    monkeypatch.setenv("KITE_HOME", str(home))
    for name in ENVIRONMENT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return home


def test_defaults_are_the_originals():
    c = Config()
    assert (c.username, c.environment, c.region) == ("unknown", "unknown", "unknown")
    assert (c.id, c.kite_key, c.kontrol_url, c.kontrol_key, c.kontrol_user) == ("", "", "", "", "")
    assert (c.ip, c.port, c.transport) == ("0.0.0.0", 0, "websocket")
    assert c.disable_authentication is False and c.disable_concurrency is False
    assert c.verify_func is None and c.verify_audience_func is None and c.verify_ttl == 0
    assert c.kite_key_any_user is False  # strict by default
    assert 0 < c.auth_leeway <= 10


def test_every_kite_variable_is_read():
    env = {
        "KITE_USERNAME": "alice",
        "KITE_ENVIRONMENT": "production",
        "KITE_REGION": "eu-west",
        "KITE_IP": "127.0.0.1",
        "KITE_PORT": "6000",
        "KITE_KONTROL_URL": "https://kontrol.example.com/kite",
        "KITE_TRANSPORT": "XHRPolling",
        "KITE_VERIFY_TTL": "90s",
        "KITE_TIMEOUT": "1m30s",
        "KITE_HANDSHAKE_TIMEOUT": "2.5s",
        "KITE_PROXY_URL": "wss://proxy.example.com/kite",
        "KITE_METRICS": "yes",
        "KITE_LOG_FORMAT": "json",
        "KITE_DRAIN_TIMEOUT": "20s",
    }
    assert set(env) == set(ENVIRONMENT_VARIABLES)
    c = Config().read_environment_variables(env)
    assert (c.metrics, c.log_format) == (True, "json")
    assert (c.username, c.environment, c.region) == ("alice", "production", "eu-west")
    assert (c.ip, c.port, c.kontrol_url) == ("127.0.0.1", 6000, "https://kontrol.example.com/kite")
    assert c.transport == "xhr_polling"
    assert (c.verify_ttl, c.timeout, c.dial_timeout) == (90.0, 90.0, 2.5)
    assert c.proxy_url == "wss://proxy.example.com/kite"
    assert c.drain_timeout == 20.0
    # empty values are ignored, as in Go
    assert Config().read_environment_variables({"KITE_USERNAME": ""}).username == "unknown"


@pytest.mark.parametrize(
    "name, value",
    [
        ("KITE_PORT", "http"),
        ("KITE_PORT", "70000"),
        ("KITE_TRANSPORT", "carrier-pigeon"),
        ("KITE_VERIFY_TTL", "5 minutes"),
        ("KITE_TIMEOUT", "-1s"),
        ("KITE_HANDSHAKE_TIMEOUT", "soon"),
        ("KITE_DRAIN_TIMEOUT", "-5s"),
    ],
)
def test_a_bad_value_names_the_variable(name, value, monkeypatch):
    with pytest.raises(ConfigError, match=f"^{name}: "):
        Config().read_environment_variables({name: value})
    monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=name):
        Kite("math", "1.0.0")


def test_go_durations():
    assert parse_duration("90s") == 90
    assert parse_duration("1m30s") == 90
    assert parse_duration("1.5h") == 5400
    assert parse_duration("300ms") == pytest.approx(0.3)
    assert parse_duration("-5m") == -300  # a negative verify TTL disables the trust cache
    assert parse_duration("0") == 0 and parse_duration("12") == 12
    for bad in ("", "s", "5x", "1m 3s", "nan", "inf", "--1s"):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_from_kite_key_populates_identity_and_kontrol(tmp_path):
    path = testutil.write_kite_key(
        str(tmp_path), "alice", kontrol_user="koding", kontrol_url="https://kontrol.example.com/kite"
    )
    c = Config.from_kite_key(path)
    assert c.username == "alice"  # sub
    assert c.kontrol_user == "koding"  # iss
    assert c.kontrol_url == "https://kontrol.example.com/kite"
    assert c.kontrol_key == testkeys.public_pem()
    assert len(c.id) == 36  # jti
    assert c.kite_key == open(path).read().strip()
    assert c.environment == "unknown"  # the rest keeps the defaults


def test_get_reads_kite_key_then_environment(kite_home, monkeypatch):
    with pytest.raises(KiteKeyNotFoundError):
        Config.get()
    assert Config.get(kite_key_required=False).username == "unknown"
    testutil.write_kite_key(str(kite_home), "alice")
    assert Config.get().username == "alice"
    monkeypatch.setenv("KITE_USERNAME", "override")
    monkeypatch.setenv("KITE_ENVIRONMENT", "staging")
    c = Config.get()
    assert (c.username, c.environment, c.kontrol_key) == ("override", "staging", testkeys.public_pem())


def test_kite_loads_kite_key_and_environment_when_present(kite_home, monkeypatch):
    k = Kite("math", "1.0.0")  # no kite.key: defaults, no error
    assert k.config.username == "unknown" and k.kite_key() == "" and k.kontrol_key() is None
    testutil.write_kite_key(str(kite_home), "alice")
    monkeypatch.setenv("KITE_REGION", "eu-west")
    k = Kite("math", "1.0.0")
    assert (k.config.username, k.config.region, k.config.kontrol_user) == ("alice", "eu-west", "kontrol")
    assert k.kite().username == "alice"
    assert k.kite_key() == k.config.kite_key != ""
    assert k.kontrol_key().public_numbers() == testkeys.key_pair().private_key.public_key().public_numbers()
    assert k.id != k.config.id  # the jti is not the kite's id, as in Go


def test_an_invalid_kite_key_stops_the_kite_with_a_clear_error(kite_home):
    kite_home.mkdir()
    (kite_home / "kite.key").write_text("garbage")
    with pytest.raises(KiteKeyError, match=str(kite_home / "kite.key")):
        Kite("math", "1.0.0")


def test_an_explicit_config_is_used_as_is(kite_home, monkeypatch):
    testutil.write_kite_key(str(kite_home), "alice")
    monkeypatch.setenv("KITE_USERNAME", "bob")
    c = Config(username="carol")
    assert Kite("math", "1.0.0", config=c).config is c
    assert c.username == "carol"


def test_copy_does_not_share_extra():
    c = Config()
    c.extra["x"] = 1
    d = c.copy()
    d.extra["x"] = 2
    assert c.extra == {"x": 1}
