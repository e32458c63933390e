"""Several Kontrol processes on one storage (``kontrol --workers N``, kontrol.supervisor).

First two Kontrols in this process on every shared backend: a kite registered over HTTP
through one heartbeats through the other (adopted from the storage, never ``registeragain``)
and is found through both. Then the command itself: N workers on one port, a worker killed
with SIGKILL is restarted and no kite is lost, SIGTERM stops them all.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import uuid

import pytest
import requests

from kite import Kite, kitekey
from kontrol.cli import worker_count
from kontrol.storage import KontrolQuery, open_storage

from .conftest import free_port, make_kite, start_kontrol, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def register_http(base: str, kite: Kite) -> requests.Response:
    body = {"url": f"http://10.0.0.9:1/{kite.id}", "kite": kite.kite().to_wire(),
            "auth": {"type": "kiteKey", "key": kite.config.kite_key}}
    return requests.post(f"{base}/register", json=body, timeout=5)


def test_a_heartbeat_through_another_kontrol_adopts_the_kite(backend):
    if not backend.shared:
        pytest.skip(f"{backend.kind}: instances do not share what they store")
    first, second = start_kontrol(backend.open()), start_kontrol(backend.open())
    try:
        math = make_kite(first, "alice", serve=False)
        assert register_http(f"http://127.0.0.1:{first.kite.port}", math).ok
        beat = requests.get(f"http://127.0.0.1:{second.kite.port}/heartbeat", params={"id": math.id}, timeout=5)
        assert beat.text == "pong" and math.id in second.registry
        wait_until(lambda: second.storage.get_by_id(math.id) is not None)
        assert requests.get(f"http://127.0.0.1:{second.kite.port}/heartbeat", params={"id": str(uuid.uuid4())},
                            timeout=5).text == "registeragain"
        math.close()
    finally:
        first.close()
        second.close()


def test_memory_and_sqlite_run_one_process():
    def args(storage: str, workers: str) -> argparse.Namespace:
        return argparse.Namespace(storage=storage, machines="", workers=workers)

    assert worker_count(args("memory", "4")) == 1
    assert worker_count(args("sqlite:///x.db", "0")) == 1
    assert worker_count(args("etcd", "3")) == 3
    assert worker_count(args("etcd", "0")) == (os.cpu_count() or 1)
    with pytest.raises(SystemExit):
        worker_count(args("etcd", "many"))


def children(pid: int) -> set[int]:
    """The pids of ``pid``'s forked workers (from /proc): its child processes running its own command
    line and not yet exited (zombies and any other child, say a short-lived helper, left out)."""
    found = set()
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
    except OSError:
        return found
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    same_command = f.read() == cmdline
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z" and same_command:
                found.add(int(entry))
    return found


@pytest.mark.timeout(120)
def test_the_workers_share_the_port_and_a_killed_one_loses_no_kite(tmp_path, etcd_server):
    port = free_port()
    home = tmp_path / "home"
    storage = f"etcd://127.0.0.1:{etcd_server.client_port}/w-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "KITE_HOME": str(home), "KONTROL_PORT": str(port), "KONTROL_IP": "127.0.0.1",
           "KONTROL_STORAGE": storage, "KONTROL_USERNAME": "koding", "KONTROL_WORKERS": "2",
           "KONTROL_KONTROLURL": f"http://127.0.0.1:{port}/kite"}
    init = subprocess.run([sys.executable, "-m", "kontrol", "--initial"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert init.returncode == 0, init.stderr
    key = kitekey.read(str(home / "kite.key"))
    proc = subprocess.Popen([sys.executable, "-m", "kontrol"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: len(children(proc.pid)) == 2 and _answers(base), 30, lambda: "2 workers never served")
        workers = children(proc.pid)
        assert len(workers) == 2, workers
        kites = []
        for _ in range(60):  # each over a connection of its own: the kernel spreads them over the workers
            k = Kite("math", "1.0.0")
            k.config.username, k.config.environment, k.config.kite_key = "koding", "prod", key
            assert register_http(base, k).ok
            kites.append(k)

        def all_pong() -> bool:
            answers = [requests.get(f"{base}/heartbeat", params={"id": k.id}, timeout=5).text for k in kites]
            assert "registeragain" not in answers, answers  # a heartbeat to the other worker adopts the kite
            return answers == ["pong"] * len(kites)

        assert all_pong()
        victim = min(workers)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: len(children(proc.pid)) == 2 and victim not in children(proc.pid), 15,
                   lambda: "the killed worker was not restarted")
        wait_until(lambda: _answers(base), 10)
        assert all_pong()
        observer = open_storage(storage, replica=False)
        try:
            assert len(observer.get(KontrolQuery(username="koding", environment="prod", name="math"))) == 60
        finally:
            observer.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
        out = proc.stdout.read()
        for line in ("2 workers serving", "restarting it", "kontrol stopped"):
            assert line in out, f"{line!r} not in the supervisor's output:\n{out}"
        assert not any(os.path.exists(f"/proc/{pid}") for pid in workers - {victim})
    finally:
        if proc.poll() is None:
            proc.kill()


def _answers(base: str) -> bool:
    try:
        return requests.get(f"{base}/kite/info", timeout=2).ok
    except requests.ConnectionError:
        return False


def test_an_adopted_kite_deleted_by_its_kontrol_is_not_written_back(backend):
    """Heartbeats carry no credentials: a stranger heartbeating a websocket kite's id through another
    Kontrol must not keep its entry alive after its own Kontrol deleted it."""
    if not backend.shared:
        pytest.skip(f"{backend.kind}: instances do not share what they store")
    first, second = start_kontrol(backend.open()), start_kontrol(backend.open(), update_interval=0.5)
    try:
        math = make_kite(first, "alice", serve=False)
        assert register_http(f"http://127.0.0.1:{first.kite.port}", math).ok
        beat = f"http://127.0.0.1:{second.kite.port}/heartbeat"
        assert requests.get(beat, params={"id": math.id}, timeout=5).text == "pong"
        first.registry.deregister(math.id)  # its own Kontrol removes it (as on a websocket's close)
        # The stranger keeps heartbeating; at its next refresh the adopting Kontrol lets go.
        wait_until(lambda: requests.get(beat, params={"id": math.id}, timeout=5).text == "registeragain", 10,
                   lambda: "the adopting Kontrol wrote it back")
        assert second.storage.get_by_id(math.id) is None and first.storage.get_by_id(math.id) is None
        math.close()
    finally:
        first.close()
        second.close()
