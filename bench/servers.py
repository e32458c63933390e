"""The Python servers of the benchmarks, each run in a process of its own.

    .venv/bin/python bench/servers.py kite|echo|proxy|tunnelproxy
    .venv/bin/python bench/servers.py tunnelled <tunnel proxy port> <kite key>

Both listen on 127.0.0.1 on a free port, print ``READY <port>`` once listening,
raise their open-files limit to the hard limit (for the idle-connection memory
test) and run until SIGTERM / SIGINT.

``kite``
    kite "math" 1.0.0, authentication off, serving
    ``square [x]`` -> x*x, ``blob [n]`` -> an n-character string
    (:func:`common.payload_text`), ``callback [fn]`` -> calls ``fn("hello")``, then
    returns ``"done"`` (the same contract as kite.js' ``server.js``).

``echo``
    the stack without kite, for the ceiling figures (same ``make_server``, same
    WebSocket frame layer):

    * ``/ws``: a bare WebSocket that sends every text message straight back;
    * ``/blob?size=N&framing=raw|sockjs``: a bare WebSocket that answers every
      message with a prebuilt kite response carrying an N-character result
      (``framing=sockjs``: inside an ``a[...]`` frame);
    * ``/kite/...``: a :class:`~kite.transport.sockjs.server.SockJSServer` whose sessions echo
      every message (SockJS websocket and raw ``/kite/websocket``) -- the session
      layer without dnode and kite.

``proxy``
    the reverse proxy kite (:class:`kite.proxy.reverse.ReverseProxy`) with throw-away test
    keys and no Kontrol; prints ``READY <port> <kite key>``: a kite key it trusts, for the
    benchmark to call its ``register`` with (see ``bench/proxied.py``).

``tunnelproxy``
    the same for the tunnel proxy (:class:`kite.proxy.tunnel.TunnelProxy`).

``tunnelled``
    the ``kite`` above without a port of its own, registered (with the kite key given) with
    the tunnel proxy on the port given, as ``register_to_tunnel`` would minus Kontrol;
    prints ``READY <public URL>``.
"""

from __future__ import annotations

from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import signal  # noqa: E402
import sys  # noqa: E402
from typing import Any  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

import common  # noqa: E402
import gevent  # noqa: E402
from gevent.event import Event  # noqa: E402


def bench_kite() -> Any:
    """The bench kite (square, blob, callback), authentication off, on 127.0.0.1:0."""
    from kite import Kite

    k = Kite("math", "1.0.0")
    k.config.ip = common.HOST
    k.config.port = 0
    k.config.disable_authentication = True
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("blob", lambda r: common.payload_text(r.args.one().must_int()))

    def callback(r: Any) -> str:
        r.args.one().must_function()("hello")
        return "done"

    k.handle_func("callback", callback)
    return k


def serve_kite() -> None:
    """The bench kite, listening."""
    k = bench_kite()
    g = gevent.spawn(k.run)
    if not k.server_ready_notify().wait(10):
        sys.exit("the bench kite did not start")
    print(f"READY {k.port}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, k.close)
    g.join()


def blob_reply(size: int, framing: str) -> str:
    """A kite response to a ``blob`` call as the kite sends it (SockJS-framed when asked)."""
    message = json.dumps({"method": 1, "arguments": [{"error": None, "result": common.payload_text(size)}],
                          "callbacks": {}}, separators=(",", ":"))
    return "a" + json.dumps([message], separators=(",", ":")) if framing == "sockjs" else message


def _bare_websocket(environ: dict, start_response: Any, reply: str | None) -> list[bytes]:
    """Serve one bare WebSocket: echo every message, or answer each with ``reply``."""
    from kite.transport.websocket import WebSocket

    ws = WebSocket.from_environ(environ)
    if ws is None:
        start_response("400 Bad Request", [("Content-Type", "text/plain")])
        return [b"WebSocket upgrade expected\n"]
    try:
        if reply is None:
            while (text := ws.recv_text()) is not None:
                ws.send_text(text)
        else:
            while ws.recv_text() is not None:
                ws.send_text(reply)
    except Exception as e:  # a benchmark client went away mid-send
        print(f"echo connection failed: {e!r}", file=sys.stderr)
    finally:
        ws.close()
        ws.wait_closed()
    return []


def _echo_session(session: Any) -> None:
    while (message := session.recv()) is not None:
        session.send(message)


def serve_echo() -> None:
    """The bare echo server (see the module docstring)."""
    from kite.transport.sockjs.server import SockJSServer
    from kite.transport.wsgi import make_server

    sockjs = SockJSServer(prefix="/kite", on_session=_echo_session)

    def app(environ: dict, start_response: Any) -> Any:
        path = environ.get("PATH_INFO", "")
        if path == "/ws":
            return _bare_websocket(environ, start_response, None)
        if path == "/blob":
            query = parse_qs(environ.get("QUERY_STRING", ""))
            reply = blob_reply(int(query["size"][0]), query.get("framing", ["raw"])[0])
            return _bare_websocket(environ, start_response, reply)
        return sockjs(environ, start_response)

    server = make_server(app, common.HOST, 0)
    server.start()
    print(f"READY {server.server_port}", flush=True)
    done = Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, done.set)
    done.wait()
    sockjs.close()
    server.stop(timeout=1)


def serve_tunnelled(port: str, kite_key: str) -> None:
    """The bench kite behind the tunnel proxy on ``port``: no listening, one registration, no Kontrol."""
    from kite.kontrolclient.proxyclient import ProxyRegistrar, tunnel_plan

    k = bench_kite()
    k.config.kite_key = kite_key
    k.config.proxy_url = f"http://{common.HOST}:{port}/kite"
    registrar = ProxyRegistrar(k.kontrol, tunnel_plan(k.kontrol))
    _proxy, lost = registrar.register_with_proxy("")
    print(f"READY {registrar.public_url}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, lost.set)
    lost.wait()
    k.close()


def serve_proxy(kind: str = "proxy") -> None:
    """The reverse (or tunnel) proxy, trusting this process's test Kontrol key."""
    from kite import testutil
    from kite.proxy.reverse import ReverseProxy
    from kite.proxy.tunnel import TunnelProxy

    config = testutil.new_config("proxy")
    proxy = TunnelProxy(config) if kind == "tunnelproxy" else ReverseProxy(config)
    proxy.register_self = False  # no Kontrol here: the benchmark registers the backend itself
    g = gevent.spawn(proxy.run)
    if not proxy.server_ready_notify().wait(10):
        sys.exit("the bench proxy did not start")
    if isinstance(proxy, TunnelProxy):
        proxy.public_host = f"{common.HOST}:{proxy.port}"  # known now; nothing registered yet
    print(f"READY {proxy.port} {testutil.new_kite_key('bench')}", flush=True)
    for sig in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(sig, proxy.close)
    g.join()


def main() -> int:
    kinds = {"kite": serve_kite, "echo": serve_echo, "proxy": serve_proxy,
             "tunnelproxy": lambda: serve_proxy("tunnelproxy")}
    common.raise_fd_limit()
    if len(sys.argv) == 4 and sys.argv[1] == "tunnelled":
        serve_tunnelled(sys.argv[2], sys.argv[3])
        return 0
    if len(sys.argv) != 2 or sys.argv[1] not in kinds:
        print(__doc__.split("\n\n")[1].strip(), file=sys.stderr)
        return 2
    kinds[sys.argv[1]]()
    return 0


if __name__ == "__main__":
    sys.exit(main())
