"""A Kite served by a real gunicorn (tests/gunicorn_app.py) in a subprocess.

Both gevent worker classes are exercised: our own ``kite.server.GeventKiteWorker`` and
gevent-websocket's ``GeventWebSocketWorker``. A Python client then calls ``square`` over
SockJS websocket, SockJS XHR polling and the raw websocket endpoint.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
import pytest
import requests

from kite import Kite

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).parent / "gunicorn"
#: gunicorn usually answers within ~1 s; allow for a slow, loaded machine.
STARTUP_TIMEOUT = 20.0

WORKERS = {
    "kite-worker": "kite.server.GeventKiteWorker",
    "geventwebsocket-worker": "geventwebsocket.gunicorn.workers.GeventWebSocketWorker",
}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _control_socket_args() -> list[str]:
    """gunicorn >= 23 opens a control socket in ~/.gunicorn by default; tests don't want it."""
    from gunicorn import config

    return ["--no-control-socket"] if any(s.name == "control_socket_disable" for s in config.KNOWN_SETTINGS) else []


def _group_members(pgid: int) -> list[int]:
    """PIDs of the live processes in process group ``pgid`` (Linux /proc)."""
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as f:
                    # pid (comm) state ppid pgrp ...; comm may contain spaces
                    if int(f.read().rsplit(")", 1)[1].split()[2]) == pgid:
                        pids.append(int(entry))
    return pids


@contextlib.contextmanager
def _child_subreaper():
    """Make this process adopt orphaned descendants while the block runs (Linux).

    When the graceful timeout expires, the gunicorn master SIGKILLs its worker and exits
    without reaping it; where PID 1 does not reap (containers, micro-VMs) the worker then
    stays a zombie. As a subreaper we adopt it and can reap it ourselves.
    """
    prctl = None
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_set_child_subreaper = 36
    if prctl is not None:
        prctl(pr_set_child_subreaper, 1, 0, 0, 0)
    try:
        yield
    finally:
        if prctl is not None:
            prctl(pr_set_child_subreaper, 0, 0, 0, 0)


def _reap(pids: list[int], timeout: float = 5.0) -> None:
    """Wait (bounded) for adopted ``pids`` to exit, and reap them."""
    deadline = time.monotonic() + timeout
    pending = set(pids)
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                done, _ = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # not our child (already reaped, or never adopted)
                done = pid
            if done:
                pending.discard(pid)
        if pending:
            gevent.sleep(0.02)


def _log(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def stop_gunicorn(proc: subprocess.Popen) -> None:
    """Stop a gunicorn started in a session of its own, and reap every process of it.

    SIGTERM to the master only: it stops and reaps its workers (an open XHR poll keeps a worker
    busy until --graceful-timeout), then exits; SIGKILL to the group if it does not within 10 s,
    and again as a safety net: nothing of its process group may outlive the test."""
    members = [pid for pid in _group_members(proc.pid) if pid != proc.pid]
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    _reap(members)


@pytest.fixture(scope="module", params=list(WORKERS))
def gunicorn_url(request):
    """Start gunicorn with the math kite; yield its ``http://127.0.0.1:P/kite`` URL; always kill it."""
    if not GUNICORN.exists():
        pytest.fail(f"{GUNICORN} is missing: install the test extras (`make deps`)", pytrace=False)
    port = free_port()
    cmd = [str(GUNICORN), "-k", WORKERS[request.param], "--graceful-timeout", "2", "-w", "1",
           *_control_socket_args(), "-b", f"127.0.0.1:{port}", "tests.gunicorn_app:app"]
    fd, log_path = tempfile.mkstemp(prefix="gunicorn-", suffix=".log")
    with _child_subreaper():
        # its own session (process group), so master and worker can be found and stopped together
        proc = subprocess.Popen(cmd, cwd=str(ROOT), stdin=subprocess.DEVNULL, stdout=fd, stderr=fd,
                                start_new_session=True)
        os.close(fd)
        try:
            url = f"http://127.0.0.1:{port}/kite"
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"gunicorn exited with {proc.returncode}: {cmd}\n{_log(log_path)}", pytrace=False)
                with contextlib.suppress(requests.RequestException):
                    if requests.get(url + "/info", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not answer /kite/info within {STARTUP_TIMEOUT:.0f} s\n"
                                f"{_log(log_path)}", pytrace=False)
                gevent.sleep(0.05)
            yield url
        finally:
            stop_gunicorn(proc)
            with contextlib.suppress(OSError):
                os.unlink(log_path)


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling", "raw_websocket"])
def test_square_through_gunicorn(gunicorn_url, transport):
    local = Kite("exp2", "1.0.0")
    if transport == "raw_websocket":
        c = local.new_client(gunicorn_url.replace("http://", "ws://") + "/websocket")
    else:
        c = local.new_client(gunicorn_url, transport=transport)
    try:
        c.dial_timeout(10)
        assert c.tell("square", 4) == 16
        futures = [c.go("square", i) for i in range(8)]
        assert [f.get(timeout=10) for f in futures] == [i * i for i in range(8)]
    finally:
        c.close()
        local.close()
