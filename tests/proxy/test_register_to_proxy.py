"""``register_to_proxy`` end to end (PROTOCOL.md §8.3) and the ``python -m kite.proxy.reverse`` command.

A real Kontrol on memory storage serves in this process; proxies run in-process or as
``python -m kite.proxy.reverse``; the SIGKILL test runs its backend kite as a subprocess.
"""

from __future__ import annotations

import logging
import signal
import socket
import subprocess
import sys
import time

import gevent
import pytest

from kite import Auth, DisconnectError, NoKontrolURLError
from kite.proxy.reverse import ReverseProxy
from tests.kontrol.conftest import free_port, wait_until
from tests.proxy.conftest import (
    ENVIRONMENT,
    ROOT,
    USER,
    backend_process,
    dial,
    find_through,
    kite_config,
    listed_urls,
    process_env,
    proxy_process,
)

#: Seconds within which a caller must learn that the backend died (it learns in milliseconds).
PROMPT = 3.0


def test_the_kite_is_found_under_the_proxy_url_and_answers_with_a_token(proxy, kites):
    backend = kites()
    registrar = gevent.spawn(backend.register_to_proxy)
    caller = kites("bob", "caller", serve=False)
    found = find_through(caller, proxy.public_base)
    assert found.url == f"http://127.0.0.1:{proxy.port}/proxy/{backend.id}"
    assert found.kite.id == backend.id and found.auth.type == "token"
    assert listed_urls(caller) == [found.url]  # only the public URL, never the private one
    with found:
        assert found.tell_with_timeout("square", 5, 9) == 81
    entry = proxy.registry.get(backend.id)
    assert (entry.username, entry.url) == (USER, backend.url)
    backend.close()  # register_to_proxy returns when the kite closes
    registrar.join(5)
    assert registrar.dead and registrar.exception is None


def test_proxy_url_or_kite_proxy_url_is_used_with_the_kite_key(proxies, kites, monkeypatch):
    """A proxy named by URL is dialed with the kite key; Kontrol is not asked for proxies."""
    wanted, other = proxies(), proxies()
    backend = kites()
    backend.config.proxy_url = wanted.url  # what KITE_PROXY_URL sets
    registrar = gevent.spawn(backend.register_to_proxy)
    caller = kites("bob", "caller", serve=False)
    try:
        found = find_through(caller, wanted.public_base)
        assert other.registry.get(backend.id) is None
        with found:
            assert found.tell_with_timeout("square", 5, 4) == 16
    finally:
        registrar.kill()


def test_without_a_kontrol_url_it_fails_at_once(kites):
    k = kites()
    k.config.kontrol_url = ""
    with gevent.Timeout(5), pytest.raises(NoKontrolURLError):
        k.register_to_proxy()


def test_no_proxy_yet_is_retried_until_one_registers(kontrol, proxies, kites):
    backend = kites()
    registrar = gevent.spawn(backend.register_to_proxy)
    caller = kites("bob", "caller", serve=False)
    try:
        gevent.sleep(0.5)  # a few retries find no proxy kite in Kontrol
        assert not registrar.dead
        proxy = proxies()
        found = find_through(caller, proxy.public_base)
        with found:
            assert found.tell_with_timeout("square", 5, 5) == 25
    finally:
        registrar.kill()


def test_a_restarted_proxy_process_is_registered_through_again(tmp_path, kontrol, kites):
    """``python -m kite.proxy.reverse`` serves; it is killed and started again on the same port."""
    backend = kites()
    registrar = gevent.spawn(backend.register_to_proxy)
    caller = kites("bob", "caller", serve=False)
    port = free_port()
    try:
        with proxy_process(tmp_path, kontrol, port) as (proc, _):
            found = find_through(caller, f"http://127.0.0.1:{port}/proxy/")
            for transport in ("websocket", "xhr_polling"):
                with dial(caller, found.url, found, transport) as c:
                    assert c.tell_with_timeout("square", 5, 3) == 9
            proc.kill()  # as a crash would: the kite sees its proxy connection drop
        with proxy_process(tmp_path, kontrol, port) as (proc, _):
            proc.wait_for(lambda line: f"kite {backend.id} of {USER}" in line and "registered" in line,
                          "the kite registering again")
            found = find_through(caller, f"http://127.0.0.1:{port}/proxy/")
            with dial(caller, found.url, found) as c:
                assert c.tell_with_timeout("square", 5, 6) == 36
            assert proc.stop() == 0
    finally:
        registrar.kill()


def test_a_backend_killed_with_sigkill_disconnects_its_callers_promptly(tmp_path, kontrol, proxy, kites):
    caller = kites("bob", "caller", serve=False)
    with backend_process(tmp_path, kontrol) as (backend, kite_id):
        found = find_through(caller, proxy.public_base)
        assert found.kite.id == kite_id
        clients = [dial(caller, found.url, found, t) for t in ("websocket", "xhr_polling", "xhr_streaming")]
        raw = dial(caller, found.url.replace("http://", "ws://") + "/websocket", found)
        clients.append(raw)
        try:
            for c in clients:
                assert c.tell_with_timeout("square", 5, 2) == 4
            pending = [c.go("pingpong", lambda msg, answer: None) for c in clients]  # never answered
            killed = time.monotonic()
            backend.kill()
            for p in pending:
                with gevent.Timeout(PROMPT):
                    with pytest.raises(DisconnectError):
                        p.get()
            assert time.monotonic() - killed < PROMPT
            wait_until(lambda: proxy.registry.get(kite_id) is None, PROMPT, lambda: "the proxy kept the entry")
            wait_until(lambda: found.url not in listed_urls(caller), PROMPT, lambda: "Kontrol still lists it")
            wait_until(lambda: len(proxy.relays) == 0, PROMPT)
        finally:
            for c in clients:
                c.close()


def test_the_proxy_command_serves_and_registers_itself(tmp_path, kontrol, kites):
    caller = kites("bob", "caller", serve=False)
    with proxy_process(tmp_path, kontrol) as (proc, port):
        [entry] = caller.get_kites(username=kontrol.username, environment=ENVIRONMENT, name="proxy")
        assert entry.url == f"http://127.0.0.1:{port}/kite"
        assert (entry.kite.name, entry.kite.version, entry.kite.region) == ("proxy", "0.0.1", "eu")
        with backend_process(tmp_path, kontrol) as (backend, kite_id):
            found = find_through(caller, f"http://127.0.0.1:{port}/proxy/{kite_id}")
            with dial(caller, found.url, found, "xhr_streaming") as c:
                assert c.tell_with_timeout("ask", 5, 2) == 28
            assert backend.stop() == 0
        proc.wait_for(lambda line: f"kite {kite_id} of {USER} removed" in line, "the entry's removal")
        assert proc.stop() == 0
    assert "proxy stopped" in proc.output


# -- bind first, register after ----------------------------------------------------------


class EventLog:
    def __init__(self) -> None:
        self.events: list[dict] = []

    def __call__(self, event: dict) -> None:
        self.events.append(event)


def test_a_failed_bind_registers_nothing_in_process(kontrol, proxies, kites, monkeypatch):
    caller = kites("bob", "caller", serve=False)
    events = EventLog()
    caller.watch_kites({"username": kontrol.username, "environment": ENVIRONMENT, "name": "proxy"}, events)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        config = kite_config(kontrol, kontrol.username)
        config.port = taken.getsockname()[1]
        proxy = ReverseProxy(config)
        calls: list[str] = []
        monkeypatch.setattr(proxy, "register_forever", calls.append)
        try:
            with pytest.raises(OSError):
                proxy.run()
            gevent.sleep(0.3)
            assert calls == [] and not proxy.server_ready_notify().is_set()
        finally:
            proxy.close()
    assert events.events == []
    proxies()  # the watch does see a proxy that listens
    wait_until(lambda: [e["action"] for e in events.events] == ["REGISTER"], 5, lambda: f"{events.events}")


def test_a_failed_bind_of_the_command_registers_nothing(tmp_path, kontrol, kites):
    caller = kites("bob", "caller", serve=False)
    events = EventLog()
    caller.watch_kites({"username": kontrol.username, "environment": ENVIRONMENT, "name": "proxy"}, events)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with proxy_process(tmp_path, kontrol, taken.getsockname()[1], wait=False) as (proc, port):
            assert proc.exit_code() == 1
    assert f"proxy: cannot listen on 127.0.0.1:{port}" in proc.output
    assert "Registering" not in proc.output
    gevent.sleep(0.3)
    assert events.events == []
    assert listed_urls(caller, "proxy", kontrol.username) == []


def test_the_command_prints_its_version_and_needs_a_kite_key(tmp_path):
    run = [sys.executable, "-m", "kite.proxy.reverse"]
    out = subprocess.run([*run, "--version"], cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert (out.returncode, out.stdout) == (0, "0.0.1\n")
    env = process_env(tmp_path / "empty-home")
    out = subprocess.run([*run, "--region", "eu"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 1 and "Cannot read kite.key" in out.stderr
    out = subprocess.run(run, cwd=ROOT, env=env, capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and "--region" in out.stderr  # required, as in Go
    out = subprocess.run([*run, "--region", "eu", "--cert", "c.pem"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 2 and "--key" in out.stderr


def test_register_needs_authentication(proxy, kites):
    k = kites("bob", "caller", serve=False)
    with k.new_client(proxy.url) as c:
        with pytest.raises(Exception) as err:
            c.tell_with_timeout("register", 5, "http://127.0.0.1:1/kite")
        assert err.value.type == "authenticationError"
        c.auth = Auth("kiteKey", k.kite_key())
        with pytest.raises(Exception) as err:
            c.tell_with_timeout("register", 5, "file:///etc/passwd")
        assert err.value.type == "argumentError"
        assert c.tell_with_timeout("register", 5, "http://127.0.0.1:1/kite") == proxy.public_url(k.id)


def test_a_backend_that_stops_answering_is_forgotten_and_comes_back(tmp_path, kontrol, proxy, kites, caplog):
    """SIGSTOP: the TCP connections stay up but nothing answers; the proxy's kite.ping notices."""
    proxy.liveness_interval, proxy.ping_timeout = 0.3, 0.5
    caplog.set_level(logging.WARNING, logger="kite.proxy")
    caller = kites("bob", "caller", serve=False)
    with backend_process(tmp_path, kontrol) as (backend, kite_id):
        found = find_through(caller, proxy.public_base)
        with dial(caller, found.url, found) as c:
            assert c.tell_with_timeout("square", 5, 2) == 4
            pending = c.go("square", 3)
            backend.proc.send_signal(signal.SIGSTOP)
            try:
                wait_until(lambda: proxy.registry.get(kite_id) is None, 5, lambda: "the proxy kept the entry")
                with gevent.Timeout(PROMPT), pytest.raises(DisconnectError):
                    pending.get()  # its relay was closed with 1014
                assert f"kite {kite_id} of {USER} forgotten: no answer to kite.ping" in caplog.text
            finally:
                backend.proc.send_signal(signal.SIGCONT)
        # the kite sees its proxy connection closed, registers again, and answers again
        wait_until(lambda: proxy.registry.get(kite_id) is not None, 10, lambda: "the kite did not come back")
        with dial(caller, found.url, found) as c:
            assert c.tell_with_timeout("square", 5, 5) == 25
