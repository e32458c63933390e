"""The kontrol command: --initial, a generated key pair, KONTROL_* settings, clean SIGTERM."""

import os
import signal
import socket
import subprocess
import sys
import time

import requests

from kite import kitekey

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
