"""A client process of the fault tests, run as ``python -m tests.faults.loadgen``: steady load on one kite.

``--clients`` clients dial ``--url`` over ``--transport`` (a ``ws://`` URL: raw WebSocket); each
calls ``echo`` back to back (``--interval`` apart) with ``--call-timeout``, and leaves
``--pending`` ``hang`` calls (each with a callback argument) open. It prints one JSON object per
line on stdout:

* ``{"event": "ready", ...}`` once every client is connected and its pending calls are sent;
* ``{"event": "window", ...}`` every ``--window`` seconds: calls ended, p50/p99/max latency
  (ms) of the successful ones, errors by type, clients connected, RSS;
* ``{"event": "all_connected", "t": ...}`` each time every client is connected again after
  some were not (``--reconnect``: the reconnect storm);
* ``{"event": "report", ...}`` at the end: every call's accounting (each ends exactly once,
  none outlives its timeout), when the disconnect errors came, and the leak counts (live
  greenlets, pending calls, callbacks) before dialing and after closing, and the RSS before
  dialing, once connected and at the end.

It ends on SIGTERM, with ``--until-disconnected`` once every client has lost its session, or
after ``--max-seconds``. ``t`` values are ``time.time()`` (the tests compare them with their own).
"""

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import gc  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from collections import Counter  # noqa: E402
from typing import Any  # noqa: E402

import gevent  # noqa: E402
import greenlet  # noqa: E402
from gevent.event import Event  # noqa: E402

from kite import Client, Kite, KiteError, workers  # noqa: E402
from kite.transport import wsclient  # noqa: E402
from kite.wire import dnode  # noqa: E402

#: Seconds the clients may take to connect (500 of them in a few processes on two loaded cores).
CONNECT_TIMEOUT = 60.0
#: Seconds the leak counts may take to settle after the clients closed (a WebSocket close
#: lingers up to :data:`kite.transport.websocket.CLOSE_TIMEOUT` for the peer's reply).
SETTLE_TIMEOUT = 6.0
#: Seconds between the connected-count checks of the reconnect storm.
CONNECTED_POLL = 0.05


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    print(json.dumps({"event": event, "t": time.time(), **fields}), flush=True)


def rss_kib(pid: int | None = None) -> int:
    """Resident set size of ``pid`` (default: this process), KiB."""
    with open(f"/proc/{pid or 'self'}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def _alive() -> list[greenlet.greenlet]:
    return [o for o in gc.get_objects() if isinstance(o, greenlet.greenlet) and bool(o)]


def live_greenlets() -> int:
    """Greenlets alive in this process, less the parked workers of :mod:`kite.workers` (a pool
    kept on purpose, up to :data:`kite.workers.MAX_IDLE_WORKERS`)."""
    parked = sum(len(pool._idle) for pool in workers._pools.values())
    return len(_alive()) - parked


def describe_greenlets() -> list[str]:
    """What each live greenlet runs (for a leak report)."""
    return sorted(repr(getattr(g, "_run", None) or getattr(g, "run", None) or g)[:120] for g in _alive())


def percentile(sorted_values: list[float], fraction: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


class CallLog:
    """Every call's start and end: ended exactly once, within its timeout (plus a second)."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout
        self.started = 0
        self.ended = 0
        self.ended_twice = 0
        self.max_overrun = 0.0  # seconds past its timeout the slowest call ended
        self.outcomes: Counter[str] = Counter()
        self.disconnect_errors_at: list[float] = []  # time.time() of each DisconnectError
        self.window_latencies: list[float] = []
        self.window_errors: Counter[str] = Counter()
        self.window_calls = 0
        self._open: dict[int, tuple[float, float]] = {}  # call number -> (monotonic start, its timeout)
        self._next = 0

    def start(self, timeout: float | None = None) -> int:
        """A call starts (``timeout``: its own, when not the log's)."""
        number = self._next
        self._next += 1
        self._open[number] = (time.monotonic(), self.timeout if timeout is None else timeout)
        self.started += 1
        return number

    def end(self, number: int, outcome: str) -> None:
        opened = self._open.pop(number, None)
        if opened is None:
            self.ended_twice += 1
            return
        started, timeout = opened
        elapsed = time.monotonic() - started
        self.ended += 1
        self.max_overrun = max(self.max_overrun, elapsed - timeout)
        self.outcomes[outcome] += 1
        self.window_calls += 1
        if outcome == "ok":
            self.window_latencies.append(elapsed)
        else:
            self.window_errors[outcome] += 1
            if outcome == "DisconnectError":
                self.disconnect_errors_at.append(time.time())

    @property
    def still_open(self) -> int:
        return len(self._open)

    def take_window(self) -> dict[str, Any]:
        latencies = sorted(self.window_latencies)
        figures = {
            "calls": self.window_calls,
            "p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
            "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
            "max_ms": round((latencies[-1] if latencies else 0.0) * 1000, 2),
            "errors": dict(self.window_errors),
        }
        self.window_latencies, self.window_errors, self.window_calls = [], Counter(), 0
        return figures


def outcome_of(exc: BaseException) -> str:
    return type(exc).__name__ if isinstance(exc, KiteError) else f"other:{type(exc).__name__}"


class LoadGen:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.local = Kite("loadgen", "1.0.0")
        c = self.local.config
        c.disable_authentication = True
        c.reconnect_max_interval = args.backoff_cap
        if args.dead_peer is not None:
            c.dead_peer_timeout = args.dead_peer
        self.calls = CallLog(args.call_timeout)
        self.clients: list[Client] = []
        self.stop = Event()
        self.callbacks_received = 0
        self.disconnected_at: list[float] = []

    def dial_all(self) -> None:
        def dial_one(i: int) -> Client:
            client = self.local.new_client(self.args.url, transport=self.args.transport)
            client.dial_timeout_seconds = CONNECT_TIMEOUT
            client.on_disconnect(lambda _c: self.disconnected_at.append(time.time()))
            if self.args.reconnect:
                client.dial_forever().wait(CONNECT_TIMEOUT)
            else:
                client.dial_timeout(CONNECT_TIMEOUT)
            return client

        jobs = [gevent.spawn(dial_one, i) for i in range(self.args.clients)]
        gevent.joinall(jobs, raise_error=True)
        self.clients = [job.value for job in jobs]

    def track(self, result: Any, number: int) -> None:
        """Count the end of call ``number`` when ``result`` (an AsyncResult) is set -- each time it is."""
        result.rawlink(lambda r: self.calls.end(number, "ok" if r.successful() else outcome_of(r.exception)))

    def start_pending(self, client: Client) -> None:
        """``--pending`` calls that are never answered, each with a callback argument; their timeout,
        ``--pending-timeout``, must outlast the load (a soak's too), or they end before the fault."""
        timeout = self.args.pending_timeout or self.args.call_timeout
        for _ in range(self.args.pending):
            number = self.calls.start(timeout)
            self.track(client.go_with_timeout("hang", timeout, lambda *a: None), number)

    def start_push(self, client: Client) -> None:
        """Ask the server to push ``--push`` characters at a time to us, until the session ends."""
        def received(_payload: str) -> None:
            self.callbacks_received += 1

        number = self.calls.start()
        result = client.go_with_timeout("push", self.args.call_timeout, self.args.push, self.args.push_interval,
                                        received)
        self.track(result, number)

    def call_loop(self, client: Client, index: int) -> None:
        while not self.stop.is_set():
            if not client.connected:
                if not self.args.reconnect:
                    return
                gevent.sleep(CONNECTED_POLL)
                continue
            number = self.calls.start()
            try:
                client.tell_with_timeout("echo", self.args.call_timeout, index)
                outcome = "ok"
            except Exception as exc:
                outcome = outcome_of(exc)
            self.calls.end(number, outcome)
            gevent.sleep(self.args.interval)

    def burst_loop(self, client: Client, _index: int) -> None:
        """``--burst`` ``nap`` calls started at once, again and again: thousands in flight on one connection."""
        while not self.stop.is_set() and client.connected:
            results = []
            for _ in range(self.args.burst):
                number = self.calls.start()
                try:
                    result = client.go_with_timeout("nap", self.args.call_timeout, self.args.nap)
                except Exception as exc:
                    self.calls.end(number, outcome_of(exc))
                    continue
                self.track(result, number)
                results.append(result)
            gevent.wait(results)

    def report_windows(self) -> None:
        while not self.stop.wait(self.args.window):
            connected = sum(c.connected for c in self.clients)
            emit("window", connected=connected, rss_kib=rss_kib(), **self.calls.take_window())

    def watch_connected(self) -> None:
        """``all_connected`` each time every client is connected again; stop when all are gone
        (``--until-disconnected``)."""
        everyone = True
        while not self.stop.is_set():
            connected = sum(c.connected for c in self.clients)
            if connected == len(self.clients) and not everyone:
                emit("all_connected", clients=connected)
            everyone = connected == len(self.clients)
            if self.args.until_disconnected and connected == 0 and self.calls.still_open == 0:
                self.stop.set()
            gevent.sleep(CONNECTED_POLL)

    def dump_state(self) -> None:
        """SIGUSR1: print each client's connection state and every greenlet's stack (for a test that
        waited too long for a disconnect: what the client was doing instead)."""
        clients = []
        for client in self.clients:
            conn = client._conn
            session = conn.session if conn is not None else None
            ws = getattr(session, "_ws", None)
            clients.append({
                "connected": client.connected,
                "session": repr(session),
                "session_closed": getattr(session, "_closed", None),
                "ws": None if ws is None else {
                    "torn_down": ws._torn_down.is_set(), "read_done": ws._read_done, "reads": ws._reads,
                    "close_code": ws.close_code, "watchdog": None if ws._watchdog is None else ws._watchdog.active},
            })
        stacks = ["".join(traceback.format_stack(g.gr_frame))[-1500:] for g in _alive() if g.gr_frame is not None]
        emit("state", clients=clients, still_open=self.calls.still_open, stacks=stacks)

    def run(self) -> int:
        time_limit = gevent.spawn_later(self.args.max_seconds, self.stop.set)
        for sig in (signal.SIGTERM, signal.SIGINT):
            gevent.signal_handler(sig, self.stop.set)
        gevent.signal_handler(signal.SIGUSR1, self.dump_state)
        greenlets_before, rss_before = live_greenlets(), rss_kib()
        self.dial_all()
        for client in self.clients:
            self.start_pending(client)
            if self.args.push:
                self.start_push(client)
        emit("ready", clients=len(self.clients), connected=sum(c.connected for c in self.clients))
        rss_ready = rss_kib()
        self.stop.wait(self.args.delay)
        loop = self.burst_loop if self.args.burst else self.call_loop
        loops = [gevent.spawn(loop, c, i) for i, c in enumerate(self.clients) if self.args.calls]
        helpers = [gevent.spawn(self.report_windows), gevent.spawn(self.watch_connected)]
        self.stop.wait()
        gevent.joinall(loops, timeout=self.args.call_timeout + 2)
        # What the pending calls end with when we close: any still open fail with a disconnect.
        stats_open = [c.stats() for c in self.clients]
        for client in self.clients:
            client.close()
        deadline = time.monotonic() + self.args.call_timeout + 2
        while self.calls.still_open and time.monotonic() < deadline:
            gevent.sleep(CONNECTED_POLL)
        gevent.killall([*helpers, time_limit])
        stats_closed = [c.stats() for c in self.clients]
        greenlets_after = live_greenlets()
        deadline = time.monotonic() + SETTLE_TIMEOUT
        while greenlets_after > greenlets_before and time.monotonic() < deadline:
            gevent.sleep(0.1)
            greenlets_after = live_greenlets()
        calls = self.calls
        emit(
            "report",
            calls_started=calls.started,
            calls_ended=calls.ended,
            calls_still_open=calls.still_open,
            ended_twice=calls.ended_twice,
            max_overrun=round(calls.max_overrun, 3),
            outcomes=dict(calls.outcomes),
            disconnect_errors=[min(calls.disconnect_errors_at), max(calls.disconnect_errors_at)]
            if calls.disconnect_errors_at
            else None,
            disconnected_at=[min(self.disconnected_at), max(self.disconnected_at)] if self.disconnected_at else None,
            callbacks_received=self.callbacks_received,
            greenlets_before=greenlets_before,
            greenlets_after=greenlets_after,
            greenlets_alive=describe_greenlets() if greenlets_after > greenlets_before else [],
            pending_at_stop=sum(s["pending_calls"] for s in stats_open),
            pending_after=sum(s["pending_calls"] for s in stats_closed),
            callbacks_after=sum(s["callbacks"] for s in stats_closed),
            rss_kib_before=rss_before,
            rss_kib_ready=rss_ready,
            rss_kib_after=rss_kib(),
        )
        return 0


def flood_unread(args: argparse.Namespace) -> int:
    """A peer that floods ``blob`` calls on a raw WebSocket and never reads an answer: it sends
    ``--flood-unread`` calls per write until the kite drops it (or ``--max-seconds``), then reports."""
    identity = Kite("flooder", "1.0.0").identity_wire()
    emit("ready", clients=1, connected=0)
    gevent.sleep(args.delay)  # connected only now: a peer that never reads does not answer pings either
    ws = wsclient.connect(args.url, timeout=CONNECT_TIMEOUT)
    started, sent, error = time.monotonic(), 0, None
    try:
        while time.monotonic() - started < args.max_seconds:
            messages = []
            for cb_id in range(sent, sent + args.flood_unread):
                options = {"kite": identity, "authentication": None, "withArgs": [args.blob],
                           "responseCallback": dnode.FUNCTION_PLACEHOLDER}
                messages.append(dnode.encode_message("blob", [options], {str(cb_id): [0, "responseCallback"]}))
            ws.send_texts(messages)
            sent += len(messages)
            gevent.sleep(0)
    except OSError as exc:  # WebSocketClosed is a ConnectionError
        error = str(exc)
    emit("report", flood_sent=sent, flood_dropped_after=round(time.monotonic() - started, 3) if error else None,
         error=error)
    ws.abort()
    return 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--transport", default="websocket")
    ap.add_argument("--clients", type=int, default=1)
    ap.add_argument("--call-timeout", type=float, default=20.0)
    ap.add_argument("--pending", type=int, default=0, help="never-answered calls per client")
    ap.add_argument("--pending-timeout", type=float, default=None,
                    help="the timeout of the --pending calls (default: --call-timeout)")
    ap.add_argument("--no-calls", dest="calls", action="store_false", help="no echo load, only pending calls")
    ap.add_argument("--interval", type=float, default=0.0, help="seconds between a client's calls")
    ap.add_argument("--push", type=int, default=0, help="ask the server to push callbacks of this many characters")
    ap.add_argument("--push-interval", type=float, default=0.01, help="seconds between pushes")
    ap.add_argument("--reconnect", action="store_true", help="dial_forever: redial after every disconnect")
    ap.add_argument("--backoff-cap", type=float, default=2.0, help="config.reconnect_max_interval, seconds")
    ap.add_argument("--dead-peer", type=float, default=None, help="config.dead_peer_timeout, seconds")
    ap.add_argument("--window", type=float, default=0.5, help="seconds per figures line")
    ap.add_argument("--burst", type=int, default=0, help="each client starts this many `nap` calls at once, repeatedly")
    ap.add_argument("--nap", type=float, default=0.01, help="seconds each `nap` call sleeps on the kite")
    ap.add_argument("--flood-unread", type=int, default=0,
                    help="raw WebSocket at --url: send this many `blob` calls per write, never read the answers")
    ap.add_argument("--blob", type=int, default=64 * 1024, help="characters each flooded `blob` call answers")
    ap.add_argument("--delay", type=float, default=0.0, help="seconds between ready and the start of the calls")
    ap.add_argument("--until-disconnected", action="store_true")
    ap.add_argument("--max-seconds", type=float, default=3600.0)
    args = ap.parse_args()
    return flood_unread(args) if args.flood_unread else LoadGen(args).run()


if __name__ == "__main__":
    sys.exit(main())
