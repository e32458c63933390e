"""The kontrol command: --initial, a generated key pair, KONTROL_* settings, clean SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest
import requests

from kite import Kite, kitekey
from kontrol.storage import open_storage

from .conftest import BACKENDS, POSTGRES_PASSWORD, POSTGRES_USER

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_initial_then_serve_then_sigterm(tmp_path):
    home = tmp_path / "home"
    port = free_port()
    env = {**os.environ, "KITE_HOME": str(home), "KONTROL_PORT": str(port), "KONTROL_IP": "127.0.0.1",
           "KONTROL_USERNAME": "koding", "KONTROL_KONTROLURL": f"http://127.0.0.1:{port}/kite"}
    init = subprocess.run([sys.executable, "-m", "kontrol", "--initial"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    assert "generated a key pair" in init.stderr and (home / "kontrol" / "key.pem").exists()
    key = kitekey.parse(path=str(home / "kite.key"))
    assert key.username == key.kontrol_user == "koding"
    assert key.kontrol_url == f"http://127.0.0.1:{port}/kite"
    assert oct((home / "kite.key").stat().st_mode & 0o777) == "0o600"

    proc = subprocess.Popen([sys.executable, "-m", "kontrol"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                assert requests.get(f"http://127.0.0.1:{port}/kite/info", timeout=2).ok
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
                time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        out = proc.stdout.read()
        assert "storage:" in out and "kontrol.db" in out and f"127.0.0.1:{port}" in out
        assert "generated a key pair" not in out  # the stored pair was reused
    finally:
        if proc.poll() is None:
            proc.kill()


def test_bad_port_names_the_variable(tmp_path):
    env = {**os.environ, "KITE_HOME": str(tmp_path), "KONTROL_PORT": "forty"}
    proc = subprocess.run([sys.executable, "-m", "kontrol"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode != 0 and "KONTROL_PORT" in proc.stderr


def _serve_kontrol(env: dict) -> subprocess.Popen:
    """``kontrol`` in a subprocess, once it answers /kite/info."""
    proc = subprocess.Popen([sys.executable, "-m", "kontrol"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 30
    while True:
        try:
            if requests.get(f"http://127.0.0.1:{env['KONTROL_PORT']}/kite/info", timeout=2).ok:
                return proc
        except requests.ConnectionError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise AssertionError(f"kontrol did not start:\n{proc.communicate()[0]}")
        time.sleep(0.2)


def _stop(proc: subprocess.Popen) -> str:
    proc.send_signal(signal.SIGTERM)
    try:
        assert proc.wait(15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.stdout.read()


@pytest.mark.parametrize("kind", BACKENDS)
def test_a_restart_keeps_the_key_pair_and_old_kite_keys_keep_working(kind, kite_home, request):
    """The kite.key written by --initial is trusted after every restart, whatever the storage: the
    key files on disk are loaded, never regenerated, and the storage holds that one pair (not one
    per start or per worker). Kontrol finds itself through its own query."""
    settings = {}
    if kind in ("etcd", "etcd2"):
        server = request.getfixturevalue("etcd_server")
        storage = location = f"{kind}://127.0.0.1:{server.client_port}/t-{uuid.uuid4().hex[:12]}"
    elif kind == "postgres":  # configured the Go Kontrol's way: KONTROL_STORAGE=postgres and KONTROL_POSTGRES_*
        pg = request.getfixturevalue("postgres_server")
        location = request.getfixturevalue("postgres_database")  # a fresh database
        storage = "postgres"
        settings = {"KONTROL_POSTGRES_HOST": "127.0.0.1", "KONTROL_POSTGRES_PORT": str(pg.port),
                    "KONTROL_POSTGRES_USERNAME": POSTGRES_USER, "KONTROL_POSTGRES_PASSWORD": POSTGRES_PASSWORD,
                    "KONTROL_POSTGRES_DBNAME": location.rsplit("/", 1)[1]}
    else:
        storage = kind
        location = str(kite_home / "kontrol.db") if kind == "sqlite" else None  # memory keeps nothing
    port = free_port()
    env = {**os.environ, "KITE_HOME": str(kite_home), "KONTROL_PORT": str(port), "KONTROL_IP": "127.0.0.1",
           "KONTROL_STORAGE": storage, "KONTROL_USERNAME": "koding",
           "KONTROL_KONTROLURL": f"http://127.0.0.1:{port}/kite", **settings}
    init = subprocess.run([sys.executable, "-m", "kontrol", "--initial"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    key_files = {name: (kite_home / "kontrol" / name).read_bytes() for name in ("key_pub.pem", "key.pem")}
    for start in range(2):
        proc = _serve_kontrol(env)
        try:
            probe = Kite("probe", "1.0.0")  # reads $KITE_HOME/kite.key, the one --initial wrote
            try:
                (found,) = probe.get_kites(username="koding")
                assert found.kite.name == "kontrol"
                assert found.url == f"http://127.0.0.1:{port}/kite", f"start {start}"
            finally:
                probe.close()
        finally:
            out = _stop(proc)
        assert "generated a key pair" not in out
    assert {name: (kite_home / "kontrol" / name).read_bytes() for name in key_files} == key_files
    if location is not None:
        with open_storage(location) as stored:
            pairs = stored.list_key_pairs(include_deleted=True)
        assert [p.public for p in pairs] == [key_files["key_pub.pem"].decode().strip()]


def test_half_a_saved_key_pair_is_refused(kite_home):
    (kite_home / "kontrol").mkdir()
    (kite_home / "kontrol" / "key_pub.pem").write_text("-----BEGIN PUBLIC KEY-----\n")
    env = {**os.environ, "KITE_HOME": str(kite_home), "KONTROL_STORAGE": "memory", "KONTROL_USERNAME": "koding"}
    proc = subprocess.run([sys.executable, "-m", "kontrol", "--initial"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0
    assert "key_pub.pem but not" in proc.stderr and "key.pem" in proc.stderr
