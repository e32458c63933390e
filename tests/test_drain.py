"""Graceful drain (issue 14): SIGTERM a kite under steady load, standalone and under gunicorn.

The kite (``tests.drain_kite``) is a process of its own, registered over a websocket with a
Kontrol (memory storage) in the test process; the callers are clients in the test process,
each with slow calls (``nap(0.5)``) and quick ones in flight all the time. On SIGTERM:

* every call started before the signal completes with its result (a call started within
  :data:`SIGNAL_RACE` of it may cross the signal on the way: either answer is right then);
* calls started after it end with the "kite is shutting down" error or ``disconnect``, none hangs;
* the kite's entry is gone from Kontrol before any caller sees its session close;
* the process exits within the drain timeout (plus a margin); a second SIGTERM stops it at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import gevent
import pytest

from kite import DisconnectError, GenericError, Kite, SendError
from kite.drain import SHUTTING_DOWN_MESSAGE
from kite.wire.protocol import Auth
from kontrol import Kontrol
from kontrol.storage import open_storage
from tests.kontrol.conftest import start_kontrol, wait_until
from tests.processes import Proc
from tests.proxy.conftest import kite_home, process_env

#: The kite's drain timeout in these tests, seconds: far above the slowest call.
DRAIN_TIMEOUT = 5.0
#: Seconds a slow call sleeps on the kite: still running when the signal comes.
SLOW_CALL = 0.5
#: Seconds between two quick calls of one caller.
QUICK_CALL_PAUSE = 0.02
#: Seconds before the signal within which a call may reach the kite after it (the call and the
#: signal cross between two busy processes): such a call may be answered either way.
SIGNAL_RACE = 0.1
#: Seconds of steady load before the signal.
LOAD_SECONDS = 1.0
#: Seconds past the drain timeout the process may take to exit (interpreter teardown, a loaded box).
EXIT_MARGIN = 3.0
#: Seconds a caller waits at most for one answer: no call may hang.
CALL_TIMEOUT = DRAIN_TIMEOUT + EXIT_MARGIN + 5.0
#: Callers, and the slow and quick callers each runs at once.
CLIENTS = 3
SLOW_PER_CLIENT = 2
QUICK_PER_CLIENT = 1
#: Seconds between two looks at Kontrol's storage for the kite's entry.
KONTROL_POLL = 0.005
#: Seconds the second SIGTERM may take to stop a kite in the middle of a long drain.
SECOND_SIGNAL_BOUND = 3.0
#: gunicorn: graceful timeout (the workers drain for 2 s less, ``GRACEFUL_MARGIN``) and workers.
GRACEFUL_TIMEOUT = 6
GUNICORN_WORKERS = 2
GUNICORN = Path(sys.executable).parent / "gunicorn"


class Call:
    """One call: when it started and ended (monotonic), how it ended."""

    def __init__(self, client: int, slow: bool, started: float) -> None:
        self.client, self.slow, self.started = client, slow, started
        self.ended = 0.0
        self.outcome = ""


class Load:
    """Callers of one kite URL (or one port shared by gunicorn workers), recording every call."""

    def __init__(self, caller: Kite, url: str) -> None:
        self.calls: list[Call] = []
        self.disconnected: dict[int, float] = {}  # client index -> when its session closed
        self.kite_ids: dict[int, str] = {}  # client index -> the id of the kite it reached
        self.clients = []
        for index in range(CLIENTS):
            client = caller.new_client(url)
            client.auth = Auth("kiteKey", caller.config.kite_key)
            client.on_disconnect(lambda c, index=index: self.disconnected.setdefault(index, time.monotonic()))
            self.clients.append(client)
        # Dialed at once, so that under gunicorn the connections may land on different workers.
        gevent.joinall([gevent.spawn(client.dial) for client in self.clients], raise_error=True)
        for index, client in enumerate(self.clients):
            self.kite_ids[index] = client.tell_with_timeout("whoami", CALL_TIMEOUT)
        slow_callers = CLIENTS * SLOW_PER_CLIENT
        # The slow callers start staggered over one slow call, so that at any moment some are early
        # in their call and some late: the signal always finds calls with up to SLOW_CALL to go.
        self.greenlets = [gevent.spawn(self._caller, index, True, SLOW_CALL * (index * SLOW_PER_CLIENT + n)
                                       / slow_callers)
                          for index in range(CLIENTS) for n in range(SLOW_PER_CLIENT)]
        self.greenlets += [gevent.spawn(self._caller, index, False, 0.0)
                           for index in range(CLIENTS) for _ in range(QUICK_PER_CLIENT)]

    def _caller(self, index: int, slow: bool, delay: float) -> None:
        client = self.clients[index]
        seconds = SLOW_CALL if slow else 0.0
        gevent.sleep(delay)
        while True:
            call = Call(index, slow, time.monotonic())
            self.calls.append(call)
            try:
                answer = client.tell_with_timeout("nap", CALL_TIMEOUT, seconds)
                call.outcome = "ok" if answer == seconds else f"wrong answer {answer!r}"
            except GenericError as exc:
                call.outcome = "refused" if exc.message == SHUTTING_DOWN_MESSAGE else f"error {exc.message}"
            except (DisconnectError, SendError):
                call.outcome = "disconnect"
            except Exception as exc:  # a timeout is the hang this test is about
                call.outcome = f"{type(exc).__name__} {exc}"
            call.ended = time.monotonic()
            if call.outcome == "disconnect":
                return
            gevent.sleep(QUICK_CALL_PAUSE)

    def join(self) -> None:
        gevent.joinall(self.greenlets, timeout=CALL_TIMEOUT + 1)
        assert all(g.dead for g in self.greenlets), "a caller hangs"

    def close(self) -> None:
        gevent.killall(self.greenlets)
        for client in self.clients:
            client.close()

    def check(self, signalled: float) -> dict[str, int]:
        """The assertions on the calls around the signal; the counts of their outcomes."""
        before = [c for c in self.calls if c.started < signalled - SIGNAL_RACE]
        racing = [c for c in self.calls if signalled - SIGNAL_RACE <= c.started < signalled]
        after = [c for c in self.calls if c.started >= signalled]
        lost = [(c.client, c.slow, round(c.started - signalled, 3), c.outcome) for c in before if c.outcome != "ok"]
        assert not lost, f"calls started before the signal did not complete: {lost}"
        odd = [(c.client, c.slow, c.outcome) for c in racing + after
               if c.outcome not in ("ok", "refused", "disconnect")]
        assert not odd, f"calls around the signal ended oddly: {odd}"
        in_flight = [c for c in before + racing if c.ended > signalled]
        assert any(c.slow for c in in_flight), "no slow call was in flight at the signal"
        outcomes = Counter(c.outcome for c in after)
        return {"before": len(before), "completed_during_drain": sum(c.outcome == "ok" for c in in_flight),
                "racing": len(racing), "after_ok": outcomes["ok"], "refused": outcomes["refused"],
                "disconnected": outcomes["disconnect"]}


class EntryWatch:
    """When Kontrol's storage stopped listing each kite id (polled every :data:`KONTROL_POLL`)."""

    def __init__(self, kontrol: Kontrol, kite_ids: set[str]) -> None:
        self.kontrol = kontrol
        self.gone: dict[str, float] = {}
        self._ids = kite_ids
        self._greenlet = gevent.spawn(self._poll)

    def _poll(self) -> None:
        while len(self.gone) < len(self._ids):
            for kite_id in self._ids - set(self.gone):
                if self.kontrol.storage.get_by_id(kite_id) is None:
                    self.gone[kite_id] = time.monotonic()
            gevent.sleep(KONTROL_POLL)

    def stop(self) -> None:
        self._greenlet.kill()


def figures(name: str, **values: object) -> None:
    print(f"\n[drain] {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()), flush=True)


@pytest.fixture
def kontrol():
    k = start_kontrol(open_storage("memory"))
    yield k
    k.close()


@pytest.fixture
def caller(kontrol):
    k = Kite("caller", "1.0.0")
    c = k.config
    c.username, c.kite_key = "alice", kontrol.register_user("alice")
    c.kontrol_key, c.kontrol_url = kontrol.keypairs.current().public, kontrol.kite.url
    yield k
    k.close()


def _start_drain_kite(tmp_path, kontrol, *args: str) -> tuple[Proc, str, str]:
    env = process_env(kite_home(tmp_path, kontrol, "alice"))
    proc = Proc([sys.executable, "-m", "tests.drain_kite", *args], env)
    registered = proc.wait_for(lambda line: line.startswith("REGISTERED "), "REGISTERED")
    _, kite_id, url = registered.split()
    return proc, kite_id, url


def _stop(proc: Proc) -> None:
    if proc.proc.poll() is None:
        proc.kill()


def test_sigterm_drains_the_kite_under_load(tmp_path, kontrol, caller):
    proc, kite_id, url = _start_drain_kite(tmp_path, kontrol, "--drain-timeout", str(DRAIN_TIMEOUT))
    load = Load(caller, url)
    try:
        gevent.sleep(LOAD_SECONDS)
        watch = EntryWatch(kontrol, {kite_id})
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.exit_code(DRAIN_TIMEOUT + EXIT_MARGIN)
        exited = time.monotonic()
        load.join()
        watch.stop()
        assert rc == 0, proc.output
        counts = load.check(signalled)
        assert kite_id in watch.gone, "the kite is still listed by Kontrol"
        first_disconnect = min(load.disconnected.values())
        assert watch.gone[kite_id] < first_disconnect, "a caller saw the session close before Kontrol dropped the kite"
        assert exited - signalled <= DRAIN_TIMEOUT + EXIT_MARGIN
        exited_line = proc.find(lambda line: line.startswith("EXITED "))
        assert exited_line is not None and "drained=True" in exited_line, proc.output
        figures("sigterm under load", kontrol_gone_after=round(watch.gone[kite_id] - signalled, 3),
                kontrol_before_close_by=round(first_disconnect - watch.gone[kite_id], 3),
                drain_seconds=round(max(load.disconnected.values()) - signalled, 3),
                exited_after=round(exited - signalled, 3), **counts)
    finally:
        load.close()
        _stop(proc)


def test_second_sigterm_stops_a_long_drain_at_once(tmp_path, kontrol, caller):
    proc, kite_id, url = _start_drain_kite(tmp_path, kontrol, "--drain-timeout", "60")
    client = caller.new_client(url)
    client.auth = Auth("kiteKey", caller.config.kite_key)
    try:
        client.dial()
        long_call = client.go("nap", 3600.0)
        wait_until(lambda: proc.proc.poll() is None and client.stats()["pending_calls"] == 1)
        gevent.sleep(0.2)  # the call is running on the kite
        os.kill(proc.pid, signal.SIGTERM)
        wait_until(lambda: kontrol.storage.get_by_id(kite_id) is None)
        with pytest.raises(GenericError, match=SHUTTING_DOWN_MESSAGE):
            client.tell_with_timeout("nap", CALL_TIMEOUT, 0.0)  # the drain is under way
        assert not long_call.ready()
        second = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.exit_code(SECOND_SIGNAL_BOUND + EXIT_MARGIN) == 0
        stopped_after = time.monotonic() - second
        with pytest.raises(DisconnectError):
            long_call.get(timeout=CALL_TIMEOUT)
        assert stopped_after <= SECOND_SIGNAL_BOUND
        exited_line = proc.find(lambda line: line.startswith("EXITED "))
        assert exited_line is not None and "drained=False" in exited_line, proc.output
        figures("second sigterm", stopped_after=round(stopped_after, 3))
    finally:
        client.close()
        _stop(proc)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sigterm_drains_gunicorn_workers_under_load(tmp_path, kontrol, caller):
    from tests.test_gunicorn import _control_socket_args

    port = _free_port()
    url = f"http://127.0.0.1:{port}/kite"
    env = process_env(kite_home(tmp_path, kontrol, "alice"), DRAIN_KITE_URL=url)
    proc = Proc([str(GUNICORN), "-k", "kite.server.GeventKiteWorker", "-w", str(GUNICORN_WORKERS),
                 "--graceful-timeout", str(GRACEFUL_TIMEOUT), "-b", f"127.0.0.1:{port}",
                 *_control_socket_args(), "tests.drain_kite:app"], env)
    load = None
    try:
        wait_until(lambda: len(proc.lines) and sum(line.startswith("REGISTERED ") for line in proc.lines)
                   >= GUNICORN_WORKERS or proc.proc.poll() is not None, 30)
        worker_ids = {line.split()[1] for line in proc.lines if line.startswith("REGISTERED ")}
        assert len(worker_ids) == GUNICORN_WORKERS, proc.output
        load = Load(caller, url)
        gevent.sleep(LOAD_SECONDS)
        watch = EntryWatch(kontrol, worker_ids)
        signalled = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        rc = proc.proc.wait(GRACEFUL_TIMEOUT + EXIT_MARGIN)
        exited = time.monotonic()
        load.join()
        watch.stop()
        assert rc == 0, proc.output
        counts = load.check(signalled)
        assert set(watch.gone) == worker_ids, "a worker is still listed by Kontrol"
        margins = []
        for index, kite_id in load.kite_ids.items():
            assert watch.gone[kite_id] < load.disconnected[index], \
                f"client {index} saw its session close before Kontrol dropped worker {kite_id}"
            margins.append(load.disconnected[index] - watch.gone[kite_id])
        assert exited - signalled <= GRACEFUL_TIMEOUT + EXIT_MARGIN
        assert "Worker graceful timeout" not in proc.output
        figures("gunicorn sigterm under load", workers_reached=len(set(load.kite_ids.values())),
                kontrol_before_close_by=round(min(margins), 3),
                drain_seconds=round(max(load.disconnected.values()) - signalled, 3),
                exited_after=round(exited - signalled, 3), **counts)
    finally:
        if load is not None:
            load.close()
        if proc.proc.poll() is None:
            proc.proc.send_signal(signal.SIGINT)
            try:
                proc.proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


#: In-process drain: (label, transport, raw websocket URL).
IN_PROCESS_TRANSPORTS = (
    ("websocket", "websocket", False),
    ("raw_websocket", "websocket", True),
    ("xhr_polling", "xhr_polling", False),
    ("xhr_streaming", "xhr_streaming", False),
)


def test_shutdown_in_process_on_every_transport():
    """``Kite.shutdown()``: slow calls on every transport finish, new ones are refused, ``/readyz``
    says not ready meanwhile, every session then ends with ``disconnect``; idempotent."""
    k = Kite("drained", "1.0.0")
    k.config.ip, k.config.port, k.config.disable_authentication = "127.0.0.1", 0, True
    k.handle_func("nap", lambda r: gevent.sleep(r.args.one().must_float64()) or "rested")
    runner = gevent.spawn(k.run)  # not the main greenlet: no signal handlers
    assert k.server_ready_notify().wait(5)
    caller = Kite("caller", "1.0.0")
    clients = []
    try:
        for _, transport, raw in IN_PROCESS_TRANSPORTS:
            url = k.url.replace("http://", "ws://", 1) + "/websocket" if raw else k.url
            client = caller.new_client(url, transport=transport)
            client.dial()
            clients.append(client)
        slow = [client.go("nap", SLOW_CALL) for client in clients]
        gevent.sleep(0.1)  # running on the kite
        started = time.monotonic()
        shutdown = gevent.spawn(k.shutdown, DRAIN_TIMEOUT)
        wait_until(lambda: k.drain.draining)
        assert k.health.readiness()[0] == 503  # (new connections are refused: the socket is closed)
        for client in clients:
            with pytest.raises(GenericError, match=SHUTTING_DOWN_MESSAGE):
                client.tell_with_timeout("nap", CALL_TIMEOUT, 0.0)
        assert [r.get(timeout=CALL_TIMEOUT) for r in slow] == ["rested"] * len(clients)
        assert shutdown.get(timeout=DRAIN_TIMEOUT + EXIT_MARGIN) is True
        drained_after = time.monotonic() - started
        wait_until(lambda: not any(client.connected for client in clients))
        for client in clients:
            with pytest.raises((DisconnectError, SendError)):
                client.tell_with_timeout("nap", CALL_TIMEOUT, 0.0)
        assert k.shutdown() is True  # idempotent: the first one's answer
        runner.join(5)
        assert runner.dead
        figures("in-process shutdown", transports=len(clients), drain_seconds=round(drained_after, 3),
                completed_during_drain=k.drain.in_flight_at_start, refused=k.drain.refused)
    finally:
        for client in clients:
            client.close()
        caller.close()
        k.close()
