"""Fault: Kontrol is SIGKILLed under load and started again (issue 13), on sqlite and on etcd.

Websocket kites redial and register again, HTTP kites are adopted on their next heartbeat (or
told ``registeragain``), the callers' ``get_kites`` and ``getToken`` and the users' token
renewals work again within :data:`RECOVERY_BOUND` of Kontrol serving again, no kite is lost,
and the entries of a kite that died during the outage (and of the killed Kontrol itself) are
gone within the key TTL.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import gevent
import pytest

from kite import testkeys
from tests.faults.conftest import load_seconds
from tests.faults.kontrol_load import Load, figures_line, new_kite, serve, stored_ids, summary_line, wait_for
from tests.faults.kontrol_process import STORAGE_TIMEOUT, KontrolProcess
from tests.kontrol.conftest import FAST, EtcdServer, etcd_server  # noqa: F401 - the fixture

#: Seconds from Kontrol serving again until every kite is found, every token renews and getToken
#: works: the kites redial within ``reconnect_max_interval`` (1 s) and register, HTTP kites
#: heartbeat every second, renewals retry every 0.3 s; twice that as margin for a loaded machine.
RECOVERY_BOUND = 6.0
#: Seconds the killed Kontrol stays down.
OUTAGE = 1.0
#: Seconds a dead kite's entry may outlive the key TTL from its last refresh (etcd expires leases on a
#: 0.5 s tick, sqlite on reads; the new Kontrol's answers come through its replica; polls on a loaded machine).
EXPIRY_MARGIN = 3.0
#: Seconds of steady load between two faults.
STEADY = 1.0
#: Seconds the kites may take to register at the start.
SETUP_TIMEOUT = 20.0


def storage_url(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    if kind == "sqlite":
        return str(tmp_path / "kontrol.db")
    server: EtcdServer = request.getfixturevalue("etcd_server")
    return f"etcd://127.0.0.1:{server.client_port}/restart-{uuid.uuid4().hex[:8]}"


@pytest.mark.timeout(0 if load_seconds() > 30 else 90)
@pytest.mark.parametrize("kind", ["sqlite", "etcd"])
def test_sigkill_kontrol_and_restart(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    pair = testkeys.key_pair()
    url = storage_url(kind, tmp_path, request)
    options = {"timeout": STORAGE_TIMEOUT} if kind == "etcd" else {}
    kontrol = KontrolProcess(url, pair, tmp_path / "kontrol-home", options)
    kontrol.start()
    load = Load(kontrol.url, pair)
    try:
        load.start()
        assert wait_for(lambda: load.found_ids() >= load.kite_ids, SETUP_TIMEOUT) is not None, kontrol.output
        load.add_users()
        began = time.monotonic()
        cycles = 0
        while cycles == 0 or time.monotonic() - began < load_seconds():
            cycles += 1
            gevent.sleep(STEADY)
            kill_and_restart(kind, kontrol, load, pair, began, cycles)
        assert wait_for(lambda: load.found_ids() == load.kite_ids, RECOVERY_BOUND) is not None
        assert stored_ids(url) >= load.kite_ids
        load.stop()
        assert load.log.problems() == []
        print(summary_line(f"SIGKILL Kontrol on {kind}, {cycles} cycles", load.log, began))
    finally:
        load.close()
        kontrol.stop()


def kill_and_restart(kind: str, kontrol: KontrolProcess, load: Load, pair: testkeys.KeyPair, began: float,
                     cycle: int) -> None:
    """One fault: SIGKILL Kontrol (a kite dying meanwhile), start it again, check the recovery."""
    doomed = serve(new_kite(kontrol.url, pair))
    doomed.register_forever(doomed.url)
    killed = time.monotonic()
    kontrol.kill()
    doomed.close()  # dies while Kontrol is down: nobody deletes its entry, its TTL must
    gevent.sleep(OUTAGE)
    back = kontrol.start()

    def recovered() -> bool:
        return load.found_ids() >= load.kite_ids and load.token_works() and load.renewed_since(back)

    recovery = wait_for(recovered, RECOVERY_BOUND + 10)
    print(figures_line(f"SIGKILL Kontrol on {kind} (cycle {cycle})", recovery, load.log, killed, back, began))
    assert recovery is not None and recovery <= RECOVERY_BOUND, (
        f"recovery {recovery} s > {RECOVERY_BOUND} s; errors: {load.log.errors(back, time.monotonic())}")
    # Stale entries: the dead kite's and the killed Kontrol's own, both last refreshed before the kill.
    expiry_bound = FAST["key_ttl"] + EXPIRY_MARGIN
    gone = wait_for(lambda: doomed.id not in load.found_ids() and kontrols(load) == 1,
                    killed + expiry_bound - time.monotonic() + 5)
    stale_for = time.monotonic() - killed if gone is not None else None
    print(f"FIGURES stale entries on {kind}: gone {stale_for:.2f} s after the kill (bound {expiry_bound:g} s)"
          if stale_for is not None else f"FIGURES stale entries on {kind}: never gone")
    assert stale_for is not None and stale_for <= expiry_bound, (
        f"still found: dead kite {doomed.id in load.found_ids()}, Kontrols {kontrols(load)}")


def kontrols(load: Load) -> int:
    """How many Kontrols ``get_kites`` lists (-1 on an error)."""
    try:
        clients = load.caller.get_kites({"username": "koding"})
    except Exception:
        return -1
    for client in clients:
        client.close()
    return sum(client.kite.name == "kontrol" for client in clients)
