"""Fixtures for the interop tests against the real kite.js (npm kite.js@1.0.13).

The node harness lives in ``tests/interop/kitejs`` (server.js, client.js, proxy.js,
tokens.js); ``make test`` / ``make deps`` installs it with ``npm ci``. If node or the
installed node_modules are missing, the tests FAIL (they are not skipped): a green run
must mean kite.js was really exercised.

* :func:`start_kitejs_server` / the ``kitejs_sockjs_server`` and ``kitejs_ws_server``
  fixtures run ``node server.js 0`` (kite.js KiteServer "math" 1.0.0, auth off) on
  127.0.0.1 and parse its ``READY {...}`` line.
* :func:`run_kitejs_client` runs ``node client.js URL METHOD ARGS ...`` (one call per
  process) and returns ``(returncode, parsed_stdout_json, stderr)``; exit code 0 = result,
  1 = kite error ``{"type","message","code"}``, 2 = local error (timeout, connectionError).
* ``py_math_kite`` runs the Python math kite (tests/gunicorn_app.py) on 127.0.0.1:0 in a
  greenlet.

Debugging: ``node client.js URL METHOD ARGS --trace`` prints every frame;
``node proxy.js 0 PORT`` is a logging proxy (see the comments at the top of each file).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import pytest

KITEJS_DIR = Path(__file__).resolve().parent / "kitejs"
SERVER_JS = KITEJS_DIR / "server.js"
CLIENT_JS = KITEJS_DIR / "client.js"
PROXY_JS = KITEJS_DIR / "proxy.js"

#: How long node server.js may take to print READY (it takes ~0.2 s on an idle machine).
READY_TIMEOUT = 15.0
#: Default overall deadline of one client.js run (connect + call), in seconds.
CLIENT_TIMEOUT = 10.0
#: Extra wall time we give client.js beyond its own --timeout before killing it.
CLIENT_KILL_GRACE = 5.0


def node_binary() -> str:
    """The ``node`` executable; fails the test (not skip) when node or kite.js is missing."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            "node is not on PATH: the interop tests need Node.js (>= 18) and the pinned kite.js; "
            "install Node.js, then run `make deps` (or `cd tests/interop/kitejs && npm ci`)",
            pytrace=False,
        )
    if not (KITEJS_DIR / "node_modules" / "kite.js" / "package.json").is_file():
        pytest.fail(
            f"kite.js is not installed in {KITEJS_DIR}/node_modules: run `make deps` "
            "(or `cd tests/interop/kitejs && npm ci`)",
            pytrace=False,
        )
    return node


# --------------------------------------------------------------------------- kite.js server


@dataclass
class KiteJSServer:
    """A running ``node server.js`` process and its READY info."""

    proc: subprocess.Popen
    info: dict[str, Any]
    stderr_path: str
    args: list[str] = field(default_factory=list)

    @property
    def port(self) -> int:
        return self.info["port"]

    @property
    def url(self) -> str:
        """``http://127.0.0.1:P/kite`` (SockJS) or ``ws://127.0.0.1:P/`` (``--transport ws``)."""
        return self.info["url"]

    @property
    def ws_url(self) -> str:
        """The raw WebSocket URL: ``ws://127.0.0.1:P/kite/websocket`` for SockJS, else :attr:`url`."""
        return self.info.get("ws_url") or self.info["url"]

    def stderr_text(self) -> str:
        with open(self.stderr_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def alive(self) -> bool:
        return self.proc.poll() is None


def _stop_process(proc: subprocess.Popen, timeout: float = 5.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=timeout)
    for stream in (proc.stdout, proc.stderr, proc.stdin):
        if stream is not None:
            with contextlib.suppress(Exception):
                stream.close()


@contextlib.contextmanager
def start_kitejs_server(transport: str = "sockjs", *extra_args: str) -> Iterator[KiteJSServer]:
    """Run ``node server.js 0 --transport TRANSPORT --host 127.0.0.1 EXTRA...`` until the block ends.

    ``transport`` is ``"sockjs"`` (``http://127.0.0.1:P/kite`` plus the raw endpoint
    ``ws://127.0.0.1:P/kite/websocket``) or ``"ws"`` (plain WebSocket, any path). Waits up
    to :data:`READY_TIMEOUT` for the READY line; the process is always terminated.
    """
    node = node_binary()
    args = [node, str(SERVER_JS), "0", "--transport", transport, "--host", "127.0.0.1", *extra_args]
    fd, stderr_path = tempfile.mkstemp(prefix="kitejs-server-", suffix=".err")
    os.close(fd)
    with open(stderr_path, "wb") as err:
        proc = subprocess.Popen(args, cwd=str(KITEJS_DIR), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=err)
    try:
        server = KiteJSServer(proc=proc, info={}, stderr_path=stderr_path, args=args)
        line = b""
        with gevent.Timeout(READY_TIMEOUT, False):
            line = proc.stdout.readline()
        text = line.decode("utf-8", "replace").strip()
        if not text.startswith("READY "):
            rc = proc.poll()
            state = f"exited with {rc}" if rc is not None else "still running"
            pytest.fail(
                f"kite.js server.js did not print READY within {READY_TIMEOUT:.0f} s ({state}); "
                f"stdout: {text!r}; stderr:\n{server.stderr_text()}",
                pytrace=False,
            )
        server.info = json.loads(text[len("READY "):])
        yield server
    finally:
        _stop_process(proc)
        with contextlib.suppress(OSError):
            os.unlink(stderr_path)


@pytest.fixture(scope="module")
def kitejs_sockjs_server() -> Iterator[KiteJSServer]:
    """kite.js KiteServer with the SockJS transport (``.url`` = http://127.0.0.1:P/kite)."""
    with start_kitejs_server("sockjs") as server:
        yield server


@pytest.fixture(scope="module")
def kitejs_ws_server() -> Iterator[KiteJSServer]:
    """kite.js KiteServer with the plain WebSocket transport (``.url`` = ws://127.0.0.1:P/)."""
    with start_kitejs_server("ws") as server:
        yield server


@pytest.fixture(scope="module", params=["sockjs", "ws"])
def kitejs_server(request) -> Iterator[KiteJSServer]:
    """Both kite.js server transports, one after the other."""
    with start_kitejs_server(request.param) as server:
        yield server


# --------------------------------------------------------------------------- kite.js client


def run_kitejs_client(url: str, method: str, args_json: Any = "[]", *extra_args: str,
                      timeout: float = CLIENT_TIMEOUT) -> tuple[int, Any, str]:
    """Run ``node client.js URL METHOD ARGS_JSON EXTRA...`` once; return ``(rc, stdout_json, stderr)``.

    ``args_json`` is the JSON text sent as ``withArgs`` (a non-str value is ``json.dumps``-ed);
    any ``"__fn__"`` string in it becomes a dnode callback. ``timeout`` (seconds) is passed as
    client.js ``--timeout`` (unless ``extra_args`` has one); the process is killed
    :data:`CLIENT_KILL_GRACE` s later. Exit codes: 0 result, 1 kite error, 2 local error.
    """
    node = node_binary()
    if not isinstance(args_json, str):
        args_json = json.dumps(args_json)
    cmd = [node, str(CLIENT_JS), url, method, args_json, *extra_args]
    if "--timeout" not in extra_args:
        cmd += ["--timeout", str(int(timeout * 1000))]
    try:
        proc = subprocess.run(cmd, cwd=str(KITEJS_DIR), stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=timeout + CLIENT_KILL_GRACE)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"client.js hung for {timeout + CLIENT_KILL_GRACE:.0f} s: {cmd}\n"
                             f"stdout: {e.stdout!r}\nstderr: {e.stderr!r}") from None
    out = proc.stdout.decode("utf-8", "replace").strip()
    err = proc.stderr.decode("utf-8", "replace")
    if out == "":
        raise AssertionError(f"client.js printed nothing (rc={proc.returncode}): {cmd}\nstderr: {err}")
    try:
        parsed = json.loads(out.splitlines()[-1])
    except ValueError:
        raise AssertionError(f"client.js printed no JSON (rc={proc.returncode}): {cmd}\n"
                             f"stdout: {out!r}\nstderr: {err}") from None
    return proc.returncode, parsed, err


# --------------------------------------------------------------------------- Python server


@contextlib.contextmanager
def run_python_kite(k) -> Iterator[Any]:
    """Run Kite ``k`` (configured for 127.0.0.1:0) in a greenlet until the block ends."""
    g = gevent.spawn(k.run)
    try:
        ready = k.server_ready_notify()
        gevent.wait([ready, g], timeout=10, count=1)
        if not ready.is_set():
            if g.dead and g.exception is not None:
                raise g.exception
            pytest.fail("the Python kite did not become ready within 10 s", pytrace=False)
        yield k
    finally:
        with contextlib.suppress(Exception):
            k.close()
        g.join(timeout=5)
        if not g.dead:
            g.kill(timeout=5)


@pytest.fixture(scope="module")
def py_math_kite():
    """The Python math kite (square, echo, add, fail, callback) on 127.0.0.1:``.port``."""
    from tests.gunicorn_app import make_math_kite

    with run_python_kite(make_math_kite()) as k:
        yield k


@pytest.fixture(scope="module")
def py_math_urls(py_math_kite) -> dict[str, str]:
    """``{"sockjs": http://127.0.0.1:P/kite, "ws": ws://127.0.0.1:P/kite/websocket}``."""
    port = py_math_kite.port
    return {"sockjs": f"http://127.0.0.1:{port}/kite", "ws": f"ws://127.0.0.1:{port}/kite/websocket"}
