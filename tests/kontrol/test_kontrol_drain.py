"""Graceful drain of the ``kontrol`` command (issue 14): SIGTERM with watchers and a registered kite.

Kontrol (sqlite storage, a process of its own) drains: its own entry is deleted first, new calls
are refused, then its watchers' sessions are closed with a close frame -- a watcher sees
``disconnect`` at once, not after a dead-peer timeout -- and it exits. The kites registered through
it keep their entries (Kontrol stopped, not they), and its own entry is gone from the storage --
with ``--workers``, only once the supervisor stops them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import uuid

import gevent

from kite import Kite
from kite.config import DEFAULT_DRAIN_TIMEOUT
from kontrol.storage import KontrolQuery, open_storage
from tests.processes import Proc

from .conftest import wait_until
from .test_cli import free_port

#: Seconds within which a watcher sees Kontrol's session close after the SIGTERM (a drain with
#: nothing in flight is instant; a dead-peer timeout would be 30 s).
WATCHER_DISCONNECT_BOUND = 2.0
#: Seconds past the drain timeout Kontrol may take to exit.
EXIT_MARGIN = 3.0


def test_sigterm_ends_watchers_cleanly_and_deletes_kontrols_own_entry(kite_home):
    port = free_port()
    env = {**os.environ, "KITE_HOME": str(kite_home), "KONTROL_PORT": str(port), "KONTROL_IP": "127.0.0.1",
           "KONTROL_STORAGE": "sqlite", "KONTROL_USERNAME": "koding", "PYTHONUNBUFFERED": "1",
           "KONTROL_KONTROLURL": f"http://127.0.0.1:{port}/kite"}
    init = subprocess.run([sys.executable, "-m", "kontrol", "--initial"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert init.returncode == 0, init.stderr
    proc = Proc([sys.executable, "-m", "kontrol"], env)
    watcher = Kite("watcher", "1.0.0")  # both read $KITE_HOME/kite.key, the one --initial wrote
    worker = Kite("worker", "1.0.0")
    worker.config.ip, worker.config.port = "127.0.0.1", 0
    runner = gevent.spawn(worker.run)
    try:
        proc.wait_for(lambda line: "registered itself" in line, "its own registration")
        assert worker.server_ready_notify().wait(5)
        worker.register(worker.url)
        (own,) = watcher.get_kites(username="koding", environment="unknown", name="kontrol")
        kontrol_id = own.kite.id
        own.close()
        events: list[dict] = []
        disconnected: list[float] = []
        watcher.watch_kites({"username": "koding", "environment": "unknown", "name": "worker"}, events.append)
        watcher.kontrol.client.on_disconnect(lambda c: disconnected.append(time.monotonic()))

        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        wait_until(lambda: bool(disconnected), WATCHER_DISCONNECT_BOUND + 5)
        assert proc.exit_code(DEFAULT_DRAIN_TIMEOUT + EXIT_MARGIN) == 0, proc.output
        exited = time.monotonic()
        assert disconnected[0] - signalled <= WATCHER_DISCONNECT_BOUND
        assert "stopped after" in proc.output and "not drained" not in proc.output, proc.output
        with open_storage(str(kite_home / "kontrol.db")) as stored:
            assert stored.get_by_id(kontrol_id) is None, "Kontrol's own entry outlived it"
            assert stored.get_by_id(worker.id) is not None, "a kite lost its entry because Kontrol stopped"
        print(f"\n[drain] kontrol sigterm: watcher_disconnected_after={disconnected[0] - signalled:.3f}, "
              f"exited_after={exited - signalled:.3f}", flush=True)
    finally:
        watcher.close()
        worker.close()
        runner.join(5)
        if proc.proc.poll() is None:
            proc.kill()


def test_workers_delete_the_shared_entry_only_when_all_stop(tmp_path, etcd_server):
    """``kontrol --workers 2``: a worker SIGTERMed on its own leaves the shared entry to its sibling
    (and is restarted); SIGTERM to the supervisor drains them all and the entry goes."""
    from .test_workers import _answers, children

    port = free_port()
    storage = f"etcd://127.0.0.1:{etcd_server.client_port}/d-{uuid.uuid4().hex[:10]}"
    env = {**os.environ, "KITE_HOME": str(tmp_path / "home"), "KONTROL_PORT": str(port), "KONTROL_IP": "127.0.0.1",
           "KONTROL_STORAGE": storage, "KONTROL_USERNAME": "koding", "KONTROL_WORKERS": "2",
           "PYTHONUNBUFFERED": "1", "KONTROL_KONTROLURL": f"http://127.0.0.1:{port}/kite"}
    init = subprocess.run([sys.executable, "-m", "kontrol", "--initial"], env=env, capture_output=True, text=True,
                          timeout=60)
    assert init.returncode == 0, init.stderr
    proc = Proc([sys.executable, "-m", "kontrol"], env)
    base = f"http://127.0.0.1:{port}"
    observer = open_storage(storage, replica=False)
    own = KontrolQuery(username="koding", environment="unknown", name="kontrol")
    try:
        wait_until(lambda: len(children(proc.pid)) == 2 and _answers(base), 30, lambda: "2 workers never served")
        wait_until(lambda: len(observer.get(own)) == 1)
        victim = min(children(proc.pid))
        os.kill(victim, signal.SIGTERM)
        wait_until(lambda: victim not in children(proc.pid), 10, lambda: "the worker did not stop")
        assert len(observer.get(own)) == 1, "a lone worker's stop deleted the entry its sibling serves"
        wait_until(lambda: len(children(proc.pid)) == 2, 10, lambda: "the worker was not restarted")
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        try:
            rc = proc.exit_code(DEFAULT_DRAIN_TIMEOUT + EXIT_MARGIN)
        except subprocess.TimeoutExpired:
            rc = None
        assert rc == 0, proc.output
        exited = time.monotonic()
        assert observer.get(own) == [], proc.output
        print(f"\n[drain] kontrol --workers 2 sigterm: exited_after={exited - signalled:.3f}", flush=True)
    finally:
        observer.close()
        if proc.proc.poll() is None:
            orphans = children(proc.pid)
            proc.kill()
            for pid in orphans:  # a SIGKILLed supervisor leaves its workers behind
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
