"""The stack ceiling: echo round trips on our gevent + WebSocket frame layer, no kite on top.

    .venv/bin/python bench/ceiling.py [--seconds S] [--rounds R] [--quick]

The echo server (``bench/servers.py echo``, its own process) uses the same
``kite.transport.wsgi.make_server`` and ``kite.transport.websocket`` frame layer as a kite. The
client sends a realistic kite call -- the 315-character dnode text a Python client
sends for ``square(3)``; SockJS-framed it is the 369-character ``["..."]`` a SockJS
client sends -- and waits for the echo:

* ``bare ws echo``: ``kite.transport.wsclient.connect`` to a bare WebSocket echo
  (``WebSocket.from_environ`` + ``recv_text``/``send_text``); the ``raw-websocket``
  rows send the dnode text, the ``sockjs-websocket`` rows its SockJS framing. This is
  the ceiling a kite call over that transport is compared with.
* ``session echo``: ``kite.transport.sockjs.client.dial`` to a ``SockJSServer`` whose sessions
  echo every message: the SockJS session layer (framing, coalescing, writer greenlets)
  without dnode and kite.

One greenlet keeps 1 or 16 messages in flight (:func:`common.run_pipeline`), so these
figures carry no greenlet switch of the client's own. ``kite call - ceiling`` is what
dnode, the kite runtime and the reader greenlets cost per call.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402

import common  # noqa: E402

#: What a Python kite client sends for ``square(3)`` (kite/dnode wire format, 315 characters).
CALL_TEXT = (
    '{"method":"square","arguments":[{"kite":{"name":"bench","username":"unknown",'
    '"id":"4cd7f3f4-b0b8-4adc-a592-5a79ad5c4a6d","environment":"unknown","region":"unknown",'
    '"version":"1.0.0","hostname":"vm"},"authentication":null,"responseCallback":"[Function]",'
    '"withArgs":[3]}],"callbacks":{"12345":[0,"responseCallback"]}}'
)
#: The same call as a SockJS client frames it (369 characters).
SOCKJS_CALL_TEXT = json.dumps([CALL_TEXT], separators=(",", ":"))
#: Message text of the bare echo per transport row.
ECHO_TEXT = {"raw-websocket": CALL_TEXT, "sockjs-websocket": SOCKJS_CALL_TEXT}


def bare_echo(url: str, text: str, window: int, n: int, warmup: int) -> common.Stats:
    """``n`` echoes of ``text`` on one bare WebSocket, ``window`` in flight."""
    from kite.transport import wsclient

    try:
        ws = wsclient.connect(url, timeout=10)
    except Exception as e:
        return common.Stats.failed(n, repr(e))
    try:
        common.run_pipeline(ws.send_text, ws.recv_text, text, window, warmup)
        return common.run_pipeline(ws.send_text, ws.recv_text, text, window, n)
    except Exception as e:
        return common.Stats.failed(n, repr(e))
    finally:
        ws.close()
        ws.wait_closed()


def session_echo(url: str, window: int, n: int, warmup: int) -> common.Stats:
    """``n`` echoes of the call text through a dialed SockJS session (``url`` decides SockJS or raw)."""
    from kite.transport.sockjs.client import dial

    try:
        session = dial(url, transport="websocket", timeout=10)
    except Exception as e:
        return common.Stats.failed(n, repr(e))
    try:
        common.run_pipeline(session.send, session.recv, CALL_TEXT, window, warmup)
        return common.run_pipeline(session.send, session.recv, CALL_TEXT, window, n)
    except Exception as e:
        return common.Stats.failed(n, repr(e))
    finally:
        session.close()


def bare_contender(servers: common.Servers, transport: str, window: int) -> common.Contender:
    """The bare WebSocket echo of ``transport``'s call text, ``window`` in flight."""
    url = servers.url("echo", "bare")
    text = ECHO_TEXT[transport]
    return common.Contender("ceiling", "bare ws echo", transport, f"{window} in flight",
                            lambda n, w: bare_echo(url, text, window, n, w), probe=500,
                            server_pid=servers.pid("echo", "bare"))


def session_contender(servers: common.Servers, transport: str, window: int) -> common.Contender:
    """The SockJS session echo over ``transport``, ``window`` in flight."""
    kind = common.TRANSPORTS[transport][0]
    url = servers.url("echo", kind)
    return common.Contender("ceiling", "session echo", transport, f"{window} in flight",
                            lambda n, w: session_echo(url, window, n, w), probe=500,
                            server_pid=servers.pid("echo", kind))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=None, help="seconds per run (default 1.5; 0.3 with --quick)")
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (default 5)")
    ap.add_argument("--quick", action="store_true", help="short runs, for a smoke run")
    ap.add_argument("--pin", choices=common.PIN_MODES, default="same", help="CPU pinning (default: same)")
    opts = ap.parse_args()
    seconds = opts.seconds or (0.3 if opts.quick else 1.5)
    common.install_cleanup()
    pinning = common.pin_cpus(opts.pin)
    servers = common.Servers()
    try:
        contenders = [make(servers, t, w) for w in (1, 16) for t in ("raw-websocket", "sockjs-websocket")
                      for make in (bare_contender, session_contender)]
        common.alternate(contenders, opts.rounds, seconds, "ceiling")
    finally:
        servers.stop()
    print(f"stack ceiling: medians of {opts.rounds} alternating runs of ~{seconds:g} s\n"
          f"{common.machine_info(None)}; {pinning}\n")
    print(common.contender_table(contenders).render())
    return 1 if common.report_failures(contenders) else 0


if __name__ == "__main__":
    sys.exit(main())
