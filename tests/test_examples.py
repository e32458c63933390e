"""Smoke tests of the Kontrol and gunicorn examples, each run as a real ``python -m examples...`` subprocess.

A real Kontrol (memory storage, :func:`tests.kontrol.conftest.start_kontrol`) serves in this
process on a free 127.0.0.1 port; the kite.key of user ``alice`` it issues is written to the
test's own ``$KITE_HOME`` (the autouse ``kite_home`` fixture), where the examples read it.

* ``math_register``: registers to Kontrol under the kite.key's ``jti`` (over websocket and over
  XHR polling), answers a token-authenticated ``square`` and refuses an unauthenticated one;
* ``exp2_query``: finds that kite through Kontrol and prints the square;
* ``exp2_watch``: prints a REGISTER line when a math kite registers and a DEREGISTER line when
  it stops;
* ``gunicorn``: real gunicorn with ``examples/gunicorn/gunicorn.conf.py`` serves the kite.

Every subprocess is stopped in a ``finally``; every wait is on a condition with a timeout.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import gevent
import pytest
import requests

from kite import AuthenticationError, Kite, kitekey
from kite.kitekey import KiteKey
from kite.transport.sockjs.sessions import WebSocketSession, XhrSession
from kontrol import Kontrol
from kontrol.storage import open_storage
from tests.kontrol.conftest import free_port, start_kontrol
from tests.processes import STOP_TIMEOUT, Proc
from tests.test_gunicorn import (
    GUNICORN,
    STARTUP_TIMEOUT,
    _child_subreaper,
    _control_socket_args,
    _group_members,
    _log,
    _reap,
)

ROOT = Path(__file__).resolve().parent.parent
USER = "alice"
ENVIRONMENT = "examples"


class Example(Proc):
    """``python -m <module> <args>`` from the project root; stdout and stderr collected line by line."""

    def __init__(self, module: str, *args: str, env: dict[str, str]) -> None:
        super().__init__([sys.executable, "-m", module, *args], env)
        self.module = module


@contextlib.contextmanager
def run_example(module: str, *args: str, env: dict[str, str]) -> Iterator[Example]:
    example = Example(module, *args, env=env)
    try:
        yield example
    finally:
        example.stop()


@contextlib.contextmanager
def math_register(env: dict[str, str], *args: str) -> Iterator[tuple[Example, str]]:
    """``examples.math_register.server`` on a free port, once it says it is registered; yields it and its URL."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/kite"
    with run_example("examples.math_register.server", "--ip", "127.0.0.1", "--port", str(port), *args,
                     env=env) as math:
        math.wait_for(lambda line: line.startswith(f"registered to Kontrol as {url}"), "its registration")
        yield math, url


def served_session(kontrol: Kontrol, kite_id: str) -> object:
    """The session Kontrol serves kite ``kite_id`` on (a peek at private state: the transport is not public)."""
    for client in list(kontrol.kite._clients):
        if client.kite.id == kite_id and client._conn is not None:
            return client._conn.session
    pytest.fail(f"Kontrol has no connection from kite {kite_id}")


@pytest.fixture
def kontrol() -> Iterator[Kontrol]:
    k = start_kontrol(open_storage("memory"))
    try:
        yield k
    finally:
        k.close()


@pytest.fixture
def kite_key(kontrol: Kontrol, kite_home: Path) -> KiteKey:
    """``$KITE_HOME/kite.key`` of ``alice``, issued by :func:`kontrol` (what ``kontrol --initial`` writes)."""
    return kitekey.parse(path=kitekey.write(kontrol.register_user(USER)))


@pytest.fixture
def env(kite_key: KiteKey, kite_home: Path) -> dict[str, str]:
    """The examples' environment: the test's KITE_HOME, environment ``examples``, unbuffered output."""
    return {**os.environ, "KITE_HOME": str(kite_home), "KITE_ENVIRONMENT": ENVIRONMENT, "PYTHONUNBUFFERED": "1"}


@pytest.fixture
def caller(kite_key: KiteKey) -> Iterator[Kite]:
    """A kite of this process holding the same kite.key."""
    k = Kite("tester", "1.0.0")
    try:
        yield k
    finally:
        k.close()


# -- math_register --------------------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["websocket", "xhr_polling"])
def test_math_register_is_found_through_kontrol_and_requires_authentication(
    kontrol, kite_key, env, caller, transport
):
    with math_register(env, "--transport", transport) as (math, url):
        assert f"over {transport}" in math.find(lambda line: line.startswith("math kite "))
        [found] = caller.get_kites(username=USER, environment=ENVIRONMENT, name="math")
        assert found.kite.id == kite_key.id  # the kite.key's jti, as in the Go example
        assert (found.kite.username, found.kite.environment, found.url) == (USER, ENVIRONMENT, url)
        session = served_session(kontrol, kite_key.id)
        assert isinstance(session, XhrSession if transport == "xhr_polling" else WebSocketSession)

        with found:  # authenticated with the token that came with get_kites
            assert found.tell_with_timeout("square", 5, 6) == 36
        math.wait_for(lambda line: line == f"Call received from {USER}, sending result 36 back", "the call")

        with caller.new_client(url) as anonymous:
            with pytest.raises(AuthenticationError):
                anonymous.tell_with_timeout("square", 5, 6)
        assert math.stop() == 0
    assert math.lines[-1] == "math kite stopped"


# -- exp2_query -----------------------------------------------------------------------------------------


def test_exp2_query_finds_the_math_kite_and_prints_the_square(kite_key, env):
    with math_register(env) as (math, url):
        proc = subprocess.run([sys.executable, "-m", "examples.exp2_query.client", "--arg", "7"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=30)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        lines = proc.stdout.splitlines()
        assert f"found 1 math kite(s) of {USER}/{ENVIRONMENT}: {kite_key.id} at {url}" in lines
        assert lines[-1] == "square(7) = 49"
        math.wait_for(lambda line: line == f"Call received from {USER}, sending result 49 back", "the call")


def test_exp2_query_without_a_math_kite_fails_with_the_error(kite_key, env):
    proc = subprocess.run([sys.executable, "-m", "examples.exp2_query.client"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert "exp2-query: no kites availabile" in proc.stderr


# -- exp2_watch -----------------------------------------------------------------------------------------


def test_exp2_watch_prints_register_and_deregister(kite_key, env):
    with run_example("examples.exp2_watch.client", env=env) as watch:
        watch.wait_for(lambda line: line.startswith("watching "), "that it watches")
        assert watch.find(lambda line: "REGISTER" in line) is None  # no math kite yet
        path = f"/{USER}/{ENVIRONMENT}/math/1.0.0/unknown/{socket.gethostname()}/{kite_key.id}"
        with math_register(env) as (math, url):
            watch.wait_for(lambda line: line == f"REGISTER {path} {url}", "the REGISTER event")
            assert math.stop() == 0
        watch.wait_for(lambda line: line.startswith(f"DEREGISTER {path}"), "the DEREGISTER event")
        assert watch.stop() == 0
    events = [line for line in watch.lines if "REGISTER" in line]
    assert [line.split()[0] for line in events] == ["REGISTER", "DEREGISTER"]


# -- gunicorn -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def gunicorn(args: list[str], env: dict[str, str], log_path: Path, url: str) -> Iterator[subprocess.Popen]:
    """Real gunicorn in its own session, once ``url/info`` answers; always stopped (SIGTERM, then SIGKILL)."""
    if not GUNICORN.exists():
        pytest.fail(f"{GUNICORN} is missing: install the test extras (`make deps`)", pytrace=False)
    with _child_subreaper(), open(log_path, "wb") as log:
        proc = subprocess.Popen([str(GUNICORN), *args], cwd=ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        members: list[int] = []
        try:
            deadline = time.monotonic() + STARTUP_TIMEOUT
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"gunicorn exited with {proc.returncode}\n{_log(str(log_path))}", pytrace=False)
                with contextlib.suppress(requests.RequestException):
                    if requests.get(url + "/info", timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    pytest.fail(f"gunicorn did not answer within {STARTUP_TIMEOUT:.0f} s\n{_log(str(log_path))}",
                                pytrace=False)
                gevent.sleep(0.05)
            members = [pid for pid in _group_members(proc.pid) if pid != proc.pid]
            yield proc
        finally:
            members = members or [pid for pid in _group_members(proc.pid) if pid != proc.pid]
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(STOP_TIMEOUT)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(STOP_TIMEOUT)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # nothing of its process group outlives the test
            _reap(members)


def test_gunicorn_serves_the_kite_with_the_example_config(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}/kite"
    env = {**os.environ, "KITE_IP": "127.0.0.1", "KITE_PORT": str(port)}  # read by gunicorn.conf.py
    log_path = tmp_path / "gunicorn.log"
    # no app on the command line: the config's wsgi_app names it
    with gunicorn(["-c", "examples/gunicorn/gunicorn.conf.py", *_control_socket_args()], env, log_path, url) as proc:
        local = Kite("exp2", "1.0.0")
        try:
            for transport in ("websocket", "xhr_polling"):
                with local.new_client(url, transport=transport) as c:
                    assert c.tell_with_timeout("square", 5, 4) == 16
                    assert [f.get(timeout=5) for f in [c.go("square", i) for i in range(5)]] == [0, 1, 4, 9, 16]
            assert requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5).text == "ok"
            with local.new_client(url, transport="xhr_polling") as c:  # a poll is open while gunicorn stops
                assert c.tell_with_timeout("square", 5, 3) == 9
                proc.terminate()
                assert proc.wait(STOP_TIMEOUT) == 0
        finally:
            local.close()
    log = _log(str(log_path))
    assert f"Listening at: {url.removesuffix('/kite')}" in log
    assert "Using worker: kite.server.GeventKiteWorker" in log


def test_gunicorn_config_names_the_worker_the_timeout_and_the_address():
    env = {**os.environ, "KITE_IP": "127.0.0.1", "KITE_PORT": "4242"}
    proc = subprocess.run([str(GUNICORN), "-c", "examples/gunicorn/gunicorn.conf.py", "--print-config"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    settings = dict(line.split(" = ", 1) for line in proc.stdout.splitlines() if " = " in line)
    settings = {name.strip(): value.strip() for name, value in settings.items()}
    assert settings["worker_class"] == "kite.server.GeventKiteWorker"
    assert settings["graceful_timeout"] == "2"
    assert settings["bind"] == "['127.0.0.1:4242']"
    assert settings["wsgi_app"] == "examples.gunicorn.app:app"


# -- exp2 ------------------------------------------------------------------------------------------------


def test_exp2_dials_the_math_kite_and_squares_every_second():
    from examples.math.server import build_kite
    from tests.serving import serve_kite

    math = build_kite()
    math.config.ip, math.config.port = "127.0.0.1", 0
    serve_kite(math)
    try:
        proc = subprocess.run([sys.executable, "-m", "examples.exp2.client", "--url", math.url, "--count", "2"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    finally:
        math.close()
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"connected to {math.url}"
    squares = [line.removeprefix("square(").split(") = ") for line in lines[1:]]
    assert len(squares) == 2 and all(int(n) ** 2 == int(sq) for n, sq in squares), lines
