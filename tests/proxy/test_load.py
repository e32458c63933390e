"""Many callers through one proxy, and a caller that stops reading: nothing lost, memory bounded.

Each test runs against both proxies: the reverse proxy (``python -m kite.proxy.reverse``, the
backend listens and the proxy dials it) and the tunnel proxy (``python -m kite.proxy.tunnel``,
the backend runs ``register_to_tunnel`` and dials a tunnel back for every caller). The proxy
and the backend kite run as subprocesses, the callers in this process: three processes on the
2 cores of the reference machine. The proxy's RSS is read from ``/proc/<pid>/status`` (VmRSS).

Scale: :data:`CONNECTIONS` callers x :data:`CALLS` calls each, twice (the second round
must not grow the proxy's memory): 200 x 100 as the issue asks, ~8 s per round on 2 cores.
"""

from __future__ import annotations

import json

import gevent
import pytest

from kite.transport import wsclient
from tests.proxy.conftest import backend_process, dial, find_through, proxy_process, raw_websocket_url, tunnel_process

CONNECTIONS = 200
CALLS = 100
#: What the proxy's RSS may grow by with the callers connected (measured: 8 MiB for the reverse
#: proxy, 21-24 MiB for the tunnel proxy, whose tunnels are two SockJS sessions each): ~50 KiB per
#: idle SockJS connection on each side of a relay plus buffers, with room to spare.
MAX_CONNECTED_GROWTH_KIB = 48 * 1024
#: What a second, identical round may add over the first: nothing is kept per call.
MAX_ROUND_GROWTH_KIB = 8 * 1024
#: The slow reader: calls of BLOB bytes each, sent without reading any answer.
BLOB = 1024 * 1024
BLOBS = 64
#: What the proxy may hold for a caller that does not read 64 MiB of answers: a message or
#: two per direction (the tunnel proxy: MAX_BACKLOG, 1 MiB, and the message in flight) and the
#: socket buffers, not the answers.
MAX_SLOW_READER_GROWTH_KIB = 24 * 1024


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


#: Per proxy: its command (a context manager yielding the process and its port), the backend's
#: flags, and the public URL of kite ``{kite_id}`` behind a proxy on ``{port}``.
STACKS = {
    "reverse": (proxy_process, (), "http://127.0.0.1:{port}/proxy/{kite_id}"),
    "tunnel": (tunnel_process, ("--tunnel",), "http://127.0.0.1:{port}/proxy?kiteID={kite_id}"),
}


@pytest.fixture(params=sorted(STACKS))
def stack(request, tmp_path, kontrol, kites):
    """``(proxy process, caller kite, found client)`` with the backend registered through the proxy."""
    command, backend_args, public_url = STACKS[request.param]
    caller = kites("bob", "caller", serve=False)
    with command(tmp_path, kontrol) as (proxy, port), \
            backend_process(tmp_path, kontrol, *backend_args) as (_backend, kite_id):
        found = find_through(caller, public_url.format(port=port, kite_id=kite_id))
        assert found.url == public_url.format(port=port, kite_id=kite_id)
        yield proxy, caller, found


def one_round(caller, found, pid: int) -> tuple[int, int, list]:
    """CONNECTIONS callers, CALLS calls each, all at once; ``(answered, proxy RSS while connected, errors)``."""
    clients = [dial(caller, found.url, found) for _ in range(CONNECTIONS)]
    answered = [0]
    errors: list = []

    def calls(c, base: int) -> None:
        for i in range(CALLS):
            n = base + i
            try:
                if c.tell_with_timeout("square", 10, n) != n * n:
                    errors.append(("wrong", n))
                    continue
            except Exception as exc:
                errors.append(repr(exc))
                continue
            answered[0] += 1

    try:
        jobs = [gevent.spawn(calls, c, k * CALLS) for k, c in enumerate(clients)]
        gevent.joinall(jobs, timeout=60)
        return answered[0], rss_kib(pid), errors
    finally:
        for c in clients:
            c.close()


def test_many_callers_at_once_lose_nothing_and_the_proxy_stays_small(stack):
    proxy, caller, found = stack
    base = rss_kib(proxy.pid)
    connected, after = [], []
    for _round in range(2):
        answered, rss, errors = one_round(caller, found, proxy.pid)
        assert errors == [] and answered == CONNECTIONS * CALLS
        connected.append(rss)
        after.append(rss_kib(proxy.pid))
    print(f"{proxy.args[2]} RSS (KiB): {base} at start; per round of {CONNECTIONS}x{CALLS} calls: {connected} with the "
          f"callers connected, {after} after they left")
    assert max(connected) - base < MAX_CONNECTED_GROWTH_KIB, (base, connected)
    assert connected[1] - connected[0] < MAX_ROUND_GROWTH_KIB and after[1] - after[0] < MAX_ROUND_GROWTH_KIB


def test_a_caller_that_stops_reading_does_not_grow_the_proxy(stack):
    """Back-pressure: the reverse proxy holds a message at a time, the tunnel proxy at most
    MAX_BACKLOG (1 MiB) per direction; the rest waits in the backend and TCP."""
    proxy, caller, found = stack
    ws = wsclient.connect(raw_websocket_url(found.url), timeout=5)
    try:
        base = rss_kib(proxy.pid)
        for i in range(BLOBS):  # raw dnode calls, and no reading of the answers
            options = {"kite": caller.identity_wire(), "authentication": found.auth.to_wire(),
                       "withArgs": [BLOB], "responseCallback": "[Function]"}
            callbacks = {str(i): [0, "responseCallback"]}
            ws.send_text(json.dumps({"method": "blob", "arguments": [options], "callbacks": callbacks}))
        gevent.sleep(1.5)  # the backend writes as fast as the proxy takes: let it fill every buffer
        stalled = rss_kib(proxy.pid)
        print(f"{proxy.args[2]} RSS: {base} KiB, {stalled} KiB with {BLOBS} MiB of answers unread")
        assert stalled - base < MAX_SLOW_READER_GROWTH_KIB, (base, stalled)
        got = 0
        with gevent.Timeout(30):
            while got < BLOBS:
                text = ws.recv_text()
                assert text is not None, f"closed after {got} answers: {ws.close_code} {ws.close_reason}"
                message = json.loads(text)
                assert message["method"] == got and len(message["arguments"][0]["result"]) == BLOB
                got += 1
    finally:
        ws.close()
        ws.wait_closed()
