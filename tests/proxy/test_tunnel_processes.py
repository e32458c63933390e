"""The tunnel proxy as processes (PROTOCOL.md §8.5): ``python -m kite.proxy.tunnel`` and private kites.

A real Kontrol on memory storage and the callers serve in this process; the tunnel proxy runs
as ``python -m kite.proxy.tunnel`` or in-process (when a test inspects it), the private kite as
``python -m tests.proxy.backend_kite --tunnel`` (it never listens: it dials the proxy, and dials
a tunnel back for every caller) or in-process. The reverse proxy's counterparts are in
``test_register_to_proxy.py``; the load tests of both proxies are in ``test_load.py``.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time
from urllib.parse import parse_qs, urlsplit

import gevent
import pytest

from kite import AuthenticationError, DisconnectError
from kite.proxy.tunneltoken import TunnelTokens, generate_key_pair
from kite.transport import websocket
from tests.kontrol.conftest import free_port, wait_until
from tests.proxy.conftest import (
    ENVIRONMENT,
    REGION,
    ROOT,
    USER,
    backend_process,
    dial,
    find_through,
    listed_urls,
    process_env,
    raw_websocket_url,
    tunnel_process,
)
from tests.proxy.methods import add_methods

#: Seconds within which a caller must learn that the private kite died (it learns in milliseconds).
PROMPT = 3.0
#: The SockJS transports a caller may use through the tunnel (plus the raw WebSocket).
TRANSPORTS = ("websocket", "xhr_polling", "xhr_streaming")
NAME = "tunnelproxy"


def public_url(port: int, kite_id: str = "") -> str:
    """The URL a tunnel proxy on ``port`` hands out to ``kite_id`` (``""``: the prefix of them all)."""
    return f"http://127.0.0.1:{port}/proxy?kiteID={kite_id}"


def tunnel_proxies_listed(caller, kontrol) -> list:
    """The (undialed) clients Kontrol lists for tunnel proxies of Kontrol's user."""
    return caller.get_kites(username=kontrol.username, environment=ENVIRONMENT, name=NAME)


def dial_every_transport(caller, found) -> list:
    """Dialed clients of ``found`` over every SockJS transport and a raw WebSocket."""
    clients = [dial(caller, found.url, found, t) for t in TRANSPORTS]
    clients.append(dial(caller, raw_websocket_url(found.url), found))
    return clients


def assert_pending_calls_fail_promptly(clients, stop) -> None:
    """Start a never-answered ``pingpong`` on each client, ``stop()`` the kite: every call
    fails with :class:`DisconnectError` within :data:`PROMPT` seconds."""
    pending = [c.go("pingpong", lambda msg, answer: None) for c in clients]
    stopped = time.monotonic()
    stop()
    for p in pending:
        with gevent.Timeout(PROMPT), pytest.raises(DisconnectError):
            p.get()
    assert time.monotonic() - stopped < PROMPT


def command(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kite.proxy.tunnel", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=30)


# -- the command serves, registers itself and carries calls ------------------------------


def test_the_tunnel_command_serves_and_registers_itself(tmp_path, kontrol, kites):
    caller = kites("bob", "caller", serve=False)
    with tunnel_process(tmp_path, kontrol) as (proc, port):
        [entry] = tunnel_proxies_listed(caller, kontrol)
        assert entry.url == f"http://127.0.0.1:{port}/kite"
        assert (entry.kite.name, entry.kite.version, entry.kite.region) == (NAME, "0.0.1", REGION)
        with backend_process(tmp_path, kontrol, "--tunnel") as (backend, kite_id):
            found = find_through(caller, public_url(port))
            assert found.url == public_url(port, kite_id) and found.kite.id == kite_id
            assert listed_urls(caller) == [found.url]  # the kite has no URL of its own
            for transport in TRANSPORTS:
                with dial(caller, found.url, found, transport) as c:
                    assert c.tell_with_timeout("square", 5, 3) == 9
                    assert c.tell_with_timeout("ask", 5, 2) == 28  # a call back to the caller, too
            assert backend.stop() == 0
        proc.wait_for(lambda line: f"kite {kite_id} of {USER} removed" in line, "the entry's removal")
        assert proc.stop() == 0
    assert f"{NAME} stopped" in proc.output


def test_a_restarted_tunnel_proxy_process_is_registered_through_again(tmp_path, kontrol, kites):
    """The proxy is killed (as a crash would) and started again on the same port."""
    backend = add_methods(kites(serve=False))  # never listens
    registrar = gevent.spawn(backend.register_to_tunnel)
    caller = kites("bob", "caller", serve=False)
    port = free_port()
    try:
        with tunnel_process(tmp_path, kontrol, port) as (proc, _):
            found = find_through(caller, public_url(port, backend.id))
            for transport in ("websocket", "xhr_polling"):
                with dial(caller, found.url, found, transport) as c:
                    assert c.tell_with_timeout("square", 5, 3) == 9
            proc.kill()
        with tunnel_process(tmp_path, kontrol, port) as (proc, _):
            proc.wait_for(lambda line: f"kite {backend.id} of {USER}" in line and "registered" in line,
                          "the kite registering again")
            found = find_through(caller, public_url(port, backend.id))
            for transport in ("websocket", "xhr_streaming"):
                with dial(caller, found.url, found, transport) as c:
                    assert c.tell_with_timeout("square", 5, 6) == 36
            assert proc.stop() == 0
    finally:
        registrar.kill()


# -- a private kite that dies or stops answering ----------------------------------------------


def test_a_backend_killed_with_sigkill_disconnects_its_callers_promptly(tmp_path, kontrol, tunnel_proxy, kites):
    caller = kites("bob", "caller", serve=False)
    with backend_process(tmp_path, kontrol, "--tunnel") as (backend, kite_id):
        found = find_through(caller, public_url(tunnel_proxy.port, kite_id))
        clients = dial_every_transport(caller, found)
        try:
            for c in clients:
                assert c.tell_with_timeout("square", 5, 2) == 4
            assert len(tunnel_proxy.relays) == len(clients)
            assert_pending_calls_fail_promptly(clients, backend.kill)
            wait_until(lambda: tunnel_proxy.registry.get(kite_id) is None, PROMPT,
                       lambda: "the proxy kept the entry")
            wait_until(lambda: found.url not in listed_urls(caller), PROMPT, lambda: "Kontrol still lists it")
            wait_until(lambda: len(tunnel_proxy.relays) == 0, PROMPT,
                       lambda: f"tunnels left: {list(tunnel_proxy.relays)}")
        finally:
            for c in clients:
                c.close()


def test_a_backend_that_stops_answering_is_forgotten_and_comes_back(tmp_path, kontrol, tunnel_proxy, kites,
                                                                     caplog):
    """SIGSTOP: the TCP connections stay up but nothing answers; the proxy's kite.ping notices."""
    tunnel_proxy.liveness_interval, tunnel_proxy.ping_timeout = 0.3, 0.5
    caplog.set_level(logging.WARNING, logger="kite.proxy")
    caller = kites("bob", "caller", serve=False)
    with backend_process(tmp_path, kontrol, "--tunnel") as (backend, kite_id):
        found = find_through(caller, public_url(tunnel_proxy.port, kite_id))
        with dial(caller, found.url, found) as c:
            assert c.tell_with_timeout("square", 5, 2) == 4
            pending = c.go("pingpong", lambda msg, answer: None)  # unanswered, stopped or not
            backend.proc.send_signal(signal.SIGSTOP)
            try:
                wait_until(lambda: tunnel_proxy.registry.get(kite_id) is None, 5,
                           lambda: "the proxy kept the entry")
                with gevent.Timeout(PROMPT), pytest.raises(DisconnectError):
                    pending.get()  # its tunnel was closed
                assert f"kite {kite_id} of {USER} forgotten: no answer to kite.ping" in caplog.text
                # the tunnel ends once the stopped kite's close handshake times out
                wait_until(lambda: len(tunnel_proxy.relays) == 0, websocket.CLOSE_TIMEOUT + PROMPT,
                           lambda: f"tunnels left: {list(tunnel_proxy.relays)}")
            finally:
                backend.proc.send_signal(signal.SIGCONT)
        # the kite sees its proxy connection closed, registers again, and answers again
        wait_until(lambda: tunnel_proxy.registry.get(kite_id) is not None, 10, lambda: "the kite did not come back")
        with dial(caller, found.url, found) as c:
            assert c.tell_with_timeout("square", 5, 5) == 25


# -- the command's start-up ---------------------------------------------------------------


def test_a_failed_bind_of_the_command_registers_nothing(tmp_path, kontrol, tunnel_proxies, kites):
    caller = kites("bob", "caller", serve=False)
    events: list[dict] = []
    caller.watch_kites({"username": kontrol.username, "environment": ENVIRONMENT, "name": NAME}, events.append)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with tunnel_process(tmp_path, kontrol, taken.getsockname()[1], wait=False) as (proc, port):
            assert proc.exit_code() == 1
    assert f"{NAME}: cannot listen on 127.0.0.1:{port}" in proc.output
    assert "Registering" not in proc.output
    gevent.sleep(0.3)
    assert events == []
    assert listed_urls(caller, NAME, kontrol.username) == []
    tunnel_proxies()  # the watch does see a tunnel proxy that listens
    wait_until(lambda: [e["action"] for e in events] == ["REGISTER"], 5, lambda: f"{events}")


def test_the_command_flags(tmp_path):
    out = command("--version")
    assert (out.returncode, out.stdout) == (0, "0.0.1\n")
    out = command("--help")
    assert out.returncode == 0
    for flag in ("--public-host", "--public-key", "--private-key", "--max-tunnels", "--idle-timeout", "--version"):
        assert flag in out.stdout
    env = process_env(tmp_path / "empty-home")
    out = command("--public-key", "x.pem", env=env)
    assert out.returncode == 2 and "--private-key" in out.stderr
    out = command("--max-tunnels", "0", env=env)
    assert out.returncode == 2 and "--max-tunnels" in out.stderr
    out = command("--port", str(free_port()), env=env)
    assert out.returncode == 1 and "Cannot read kite.key" in out.stderr


def test_bad_key_files_stop_the_command(tmp_path, kontrol):
    """With a kite.key, key files that cannot be used end the command (1) before it listens."""
    private, _public = generate_key_pair()
    (tmp_path / "priv.pem").write_text(private)
    (tmp_path / "other.pem").write_text(generate_key_pair()[1])
    for public, message in (("missing.pem", "cannot read public key file"),
                            ("other.pem", "the public key is not the private key's")):
        args = ("--public-key", str(tmp_path / public), "--private-key", str(tmp_path / "priv.pem"))
        with tunnel_process(tmp_path, kontrol, None, *args, wait=False) as (proc, _port):
            assert proc.exit_code() == 1
        assert f"{NAME}: {message}" in proc.output and "Registering" not in proc.output


def test_the_version_flag_and_key_files_are_used(tmp_path, kontrol, kites):
    """``--version 0.0.9`` is the version registered; the tunnel tokens are signed with the key files."""
    private, public = generate_key_pair()
    (tmp_path / "priv.pem").write_text(private)
    (tmp_path / "pub.pem").write_text(public)
    backend = add_methods(kites(serve=False))
    tokens: list[str] = []  # of the kite.tunnel calls the proxy makes
    backend._methods["kite.tunnel"].pre_handle_func(
        lambda r: tokens.append(parse_qs(urlsplit(r.args.one().must_map()["url"]).query)["token"][0]))
    caller = kites("bob", "caller", serve=False)
    args = ("--version", "0.0.9", "--public-key", str(tmp_path / "pub.pem"),
            "--private-key", str(tmp_path / "priv.pem"))
    with tunnel_process(tmp_path, kontrol, None, *args) as (proc, port):
        [entry] = tunnel_proxies_listed(caller, kontrol)
        assert entry.kite.version == "0.0.9"
        registrar = gevent.spawn(backend.register_to_tunnel)
        try:
            found = find_through(caller, public_url(port, backend.id))
            with dial(caller, found.url, found) as c:
                assert c.tell_with_timeout("square", 5, 8) == 64
        finally:
            registrar.kill()
        assert proc.stop() == 0
    [token] = tokens
    kite_id, _seq = TunnelTokens(private, public).verify(token)  # signed with the given private key
    assert kite_id == backend.id
    with pytest.raises(AuthenticationError, match="invalid tunnel token"):
        TunnelTokens().verify(token)  # and with no other
