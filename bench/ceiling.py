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


def bare_link(url: str) -> common.Link:
    """A bare WebSocket to ``url``: its ``(send, recv, close)`` for :func:`common.pipeline_stats`."""
    from kite.transport import wsclient

    ws = wsclient.connect(url, timeout=10)

    def close() -> None:
        ws.close()
        ws.wait_closed()

    return ws.send_text, ws.recv_text, close


def bare_echo(url: str, text: str, window: int, n: int, warmup: int, reply_size: int | None = None) -> common.Stats:
    """``n`` echoes of ``text`` on one bare WebSocket, ``window`` in flight.

    Every reply must be ``reply_size`` characters long (default: ``len(text)``, an echo).
    """
    return common.pipeline_stats(lambda: bare_link(url), text, window, n, warmup, reply_size)


def session_echo(url: str, window: int, n: int, warmup: int) -> common.Stats:
    """``n`` echoes of the call text through a dialed SockJS session (``url`` decides SockJS or raw)."""

    def session_link() -> common.Link:
        from kite.transport.sockjs.client import dial

        session = dial(url, transport="websocket", timeout=10)
        return session.send, session.recv, session.close

    return common.pipeline_stats(session_link, CALL_TEXT, window, n, warmup)


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
    rounds, seconds, pinning = common.alternating_setup(__doc__, seconds=1.5, quick_seconds=0.3, rounds=5)
    servers = common.Servers()
    try:
        contenders = [make(servers, t, w) for w in (1, 16) for t in ("raw-websocket", "sockjs-websocket")
                      for make in (bare_contender, session_contender)]
        common.alternate(contenders, rounds, seconds, "ceiling")
    finally:
        servers.stop()
    print(common.alternating_header("stack ceiling", rounds, seconds, None, pinning))
    print(common.contender_table(contenders).render())
    return 1 if common.report_failures(contenders) else 0


if __name__ == "__main__":
    sys.exit(main())
