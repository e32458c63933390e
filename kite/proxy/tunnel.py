"""The tunnel proxy kite (PROTOCOL.md §8.5): public URLs for kites nobody can dial.

::

    python -m kite.proxy.tunnel [--port 3999] [--public-host proxy.example.com:3999]
                                [--public-key pub.pem --private-key priv.pem]

Who dials whom (every arrow is a connection, opened by the side it starts from)::

    private kite ──(1) dials, register()──▶ tunnel proxy (:3999/kite)
                 ◀── "http://proxy.example.com:3999/proxy?kiteID=<kite id>" ──
    private kite ──(2) register(<that URL>)──▶ Kontrol
    caller ──(3) getKites──▶ Kontrol ──▶ [<that URL>, token]
    caller ──(4) dials …/proxy/<server>/<session>/websocket?kiteID=<id> (or XHR)──▶ proxy
    proxy ──(5) kite.tunnel({"url": "ws://proxy…/tunnel/<server>/<session>/websocket?token=<jwt>"})
          over connection (1) ──▶ private kite
    private kite ──(6) dials that URL──▶ proxy, which joins (4) and (6) and copies messages

The private kite needs no open port: both its connections go out. The caller's session may
use any SockJS transport -- WebSocket, raw WebSocket (``/proxy/websocket?kiteID=``), XHR
polling or streaming -- including Go's XHR client, which appends the session path after
the query string (``/proxy?kiteID=<id>/<server>/<session>/xhr``); the kite's side is always
one SockJS WebSocket. Calls through the tunnel are authenticated by the kite like direct
ones (:mod:`kite.handlers`). The ``/tunnel`` side takes only tokens the proxy signed
(:mod:`kite.proxy.tunneltoken`), each for one tunnel once.

Limits: at most ``max_tunnels`` open tunnels per kite (a caller beyond that is closed with
``c[3000,"Too many tunnels to this kite"]``), a bounded backlog per direction
(:mod:`kite.proxy.tunnels`), an idle timeout, and a kite must dial its tunnel within
``start_timeout`` seconds. Unknown kites get a 404 before any session opens.

The proxy registers itself with Kontrol as ``<scheme>://<public host>/kite`` once it
listens -- ``http``/``https`` where Go's wrote ``ws``, which the 2016 Go client cannot dial
and ours would dial as a raw WebSocket.
"""

from __future__ import annotations

if __name__ == "__main__":  # a server entry point: patch before anything loads requests
    from gevent import monkey

    monkey.patch_all()

import argparse  # noqa: E402
import itertools  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402
from collections.abc import Callable, Iterable  # noqa: E402
from typing import TYPE_CHECKING, Any  # noqa: E402
from urllib.parse import parse_qs  # noqa: E402

from kite.config import Config  # noqa: E402
from kite.errors import AuthenticationError, KiteError  # noqa: E402
from kite.request import Request  # noqa: E402
from kite.transport.session import Session  # noqa: E402
from kite.transport.sockjs.server import SockJSServer  # noqa: E402

from .base import ProxyKite, add_common_flags, check_common_flags, proxy_config, run_command  # noqa: E402
from .httpforward import error  # noqa: E402
from .relay import IDLE_TIMEOUT, Relays  # noqa: E402
from .tunnels import MAX_BACKLOG, Tunnel  # noqa: E402
from .tunneltoken import TunnelTokens  # noqa: E402

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

NAME = "tunnelproxy"
#: The binary's default version (Go's ``-version`` flag); the library's ``ProxyVersion`` is 0.0.2.
VERSION = "0.0.1"
DEFAULT_PORT = 3999
#: ``host:port`` in the URLs handed out (the Go binary's default).
DEFAULT_PUBLIC_HOST = "127.0.0.1:3999"
PUBLIC_PREFIX = "/proxy"
TUNNEL_PREFIX = "/tunnel"
#: Seconds the kite's ``kite.tunnel`` may take (Go: 4 s).
TUNNEL_CALL_TIMEOUT = 4.0
#: Seconds a kite has to dial its tunnel once it answered ``kite.tunnel`` (Go waits a minute;
#: our kites and Go's answer only after dialing, so the dial is normally there already).
START_TIMEOUT = 10.0
#: Open tunnels per kite at most.
MAX_TUNNELS = 1000
#: Close frames for callers the proxy cannot serve.
TOO_MANY_TUNNELS = (3000, "Too many tunnels to this kite")
NO_TUNNEL = (3000, "Cannot open a tunnel to the kite")
#: Go's XHR client puts the session path after the query string: ``kiteID=<id>/<server>/<session>/<transport>``.
_GO_XHR_QUERY = re.compile(r"^kiteID=([^/&]+)(/[^/&?]+/[^/&?]+/[a-z_]+)$")

log = logging.getLogger("kite.proxy")


def route_go_xhr(environ: dict[str, Any]) -> None:
    """Rewrite Go's ``/proxy?kiteID=<id>/<server>/<session>/xhr`` to ``/proxy/<server>/<session>/xhr?kiteID=<id>``."""
    if environ.get("PATH_INFO", "").rstrip("/") != PUBLIC_PREFIX:
        return
    match = _GO_XHR_QUERY.match(environ.get("QUERY_STRING", ""))
    if match is not None:
        environ["PATH_INFO"] = PUBLIC_PREFIX + match.group(2)
        environ["QUERY_STRING"] = f"kiteID={match.group(1)}"


def kite_id_of(query: str) -> str:
    """The ``kiteID`` of a query string (``""`` when there is none)."""
    return parse_qs(query).get("kiteID", [""])[0]


class TunnelProxy(ProxyKite):
    """The tunnel proxy kite; see the module docstring.

    ``public_host`` (``host:port``) makes the URLs handed out; ``private_key``/``public_key``
    (PEM text) sign the tunnel tokens (neither: a key pair made at start); ``idle_timeout``
    closes tunnels that carried nothing that long; ``max_tunnels`` caps each kite's open
    tunnels. Serve it with :meth:`run`; ``register_self`` (default ``True``) registers it
    with ``config.kontrol_url`` once it listens.
    """

    def __init__(self, config: Config | None = None, *, public_host: str = DEFAULT_PUBLIC_HOST,
                 private_key: str | None = None, public_key: str | None = None,
                 idle_timeout: float = IDLE_TIMEOUT, max_tunnels: int = MAX_TUNNELS, version: str = VERSION):
        super().__init__(NAME, version, config)
        self.public_host = public_host
        self.tokens = TunnelTokens(private_key, public_key)
        self.relays = Relays(idle_timeout)
        self.max_tunnels = max_tunnels
        self.start_timeout = START_TIMEOUT
        #: Characters queued for one side before the other side is read no more.
        self.max_backlog = MAX_BACKLOG
        self.public_side = self._sockjs_server(PUBLIC_PREFIX, self._serve_caller)
        self.tunnel_side = self._sockjs_server(TUNNEL_PREFIX, self._serve_tunnel)
        self._waiting: dict[int, Tunnel] = {}  # tunnels whose kite has not dialed back yet, by seq
        self._seq = itertools.count(1)
        #: Asked by the server's :class:`~kite.proxy.forward.ForwardingHandler` before a WebSocket upgrade.
        self.upgrade_gate = self

    def _sockjs_server(self, prefix: str, on_session: Callable[[Session], None]) -> SockJSServer:
        c = self.config
        return SockJSServer(prefix=prefix, on_session=on_session, heartbeat_interval=c.heartbeat_interval,
                            disconnect_delay=c.disconnect_delay, max_message_size=c.max_message_size)

    # -- URLs ----------------------------------------------------------------------------

    @property
    def ws_scheme(self) -> str:
        return "wss" if self._ssl_context is not None else "ws"

    def public_url(self, kite_id: str) -> str:
        """``<scheme>://<public host>/proxy?kiteID=<kite id>`` (Go's, with ``https`` under TLS)."""
        return f"{self.http_scheme}://{self.public_host}{PUBLIC_PREFIX}?kiteID={kite_id}"

    @property
    def self_url(self) -> str:
        """``<scheme>://<public host>/kite``."""
        return f"{self.http_scheme}://{self.public_host}/kite"

    def tunnel_url(self, session_path: str, token: str) -> str:
        """The URL the kite dials for a tunnel: ``ws://<public host>/tunnel<session path>/websocket?token=…``
        (``session_path``: ``/<server>/<session>``, a SockJS session path of the kite's side)."""
        return f"{self.ws_scheme}://{self.public_host}{TUNNEL_PREFIX}{session_path}/websocket?token={token}"

    def _backend_url(self, r: Request) -> str:
        return ""  # the argument is ignored, as Go's: the kite is reached over its connection

    # -- the caller's side ---------------------------------------------------------------

    def _serve_caller(self, session: Session) -> None:
        """A caller's session on ``/proxy``: open a tunnel to its kite and run it."""
        kite_id = kite_id_of(session.query)
        backend = self.registry.get(kite_id)
        if backend is None:  # gone since the request was routed
            session.close(*NO_TUNNEL)
            return
        if len(backend.relays) >= self.max_tunnels:
            log.warning("%s -> kite %s refused: %d tunnels open", session.remote_addr, kite_id, len(backend.relays))
            session.close(*TOO_MANY_TUNNELS)
            return
        tunnel = Tunnel(next(self._seq), session, backend, self.max_backlog)
        backend.relays.add(tunnel)  # counts against the limit while it starts
        self._waiting[tunnel.seq] = tunnel
        try:
            if not self._open(tunnel):
                session.close(*NO_TUNNEL)
                return
        finally:
            self._waiting.pop(tunnel.seq, None)
            backend.relays.discard(tunnel)
        self.relays.run(tunnel)

    def _open(self, tunnel: Tunnel) -> bool:
        """Ask the kite to dial back and wait until it did; ``False`` (logged) when it does not."""
        backend = tunnel.backend
        url = self.tunnel_url(f"/0/t{tunnel.seq}", self.tokens.sign(backend.kite_id, tunnel.seq))
        try:
            backend.client.tell_with_timeout("kite.tunnel", TUNNEL_CALL_TIMEOUT, {"url": url})
        except KiteError as exc:
            log.error("%r: cannot open a tunnel to the kite: %s", tunnel, exc)
            return False
        if not tunnel.started.wait(self.start_timeout):
            log.error("%r: the kite did not dial its tunnel within %g s", tunnel, self.start_timeout)
            return False
        return True

    # -- the kite's side -----------------------------------------------------------------

    def _serve_tunnel(self, session: Session) -> None:
        """The kite's WebSocket on ``/tunnel``: check its token, join its tunnel, wait for the end."""
        token = parse_qs(session.query).get("token", [""])[0]
        try:
            kite_id, seq = self.tokens.verify(token)
        except AuthenticationError as exc:
            log.warning("tunnel WebSocket from %s refused: %s", session.remote_addr, exc.message)
            session.close(3000, "Invalid tunnel token")
            return
        tunnel = self._waiting.get(seq)
        if tunnel is None or tunnel.backend.kite_id != kite_id or not tunnel.attach(session):
            log.warning("tunnel WebSocket from %s refused: no tunnel #%d to kite %s waits", session.remote_addr,
                        seq, kite_id)
            session.close(3000, "No such tunnel")
            return
        tunnel.done.wait()

    # -- serving -------------------------------------------------------------------------

    def before_upgrade(self, environ: dict[str, Any]) -> bool:
        """A caller's WebSocket is accepted only for a registered kite (else :meth:`__call__` answers 404)."""
        route_go_xhr(environ)
        return self.registry.get(kite_id_of(environ.get("QUERY_STRING", ""))) is not None

    def after_request(self, environ: dict[str, Any]) -> None:
        pass

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """WSGI: ``/proxy`` (callers), ``/tunnel`` (kites dialing back), the rest is the kite's own."""
        path = environ.get("PATH_INFO", "")
        if path == PUBLIC_PREFIX or path.startswith(PUBLIC_PREFIX + "/"):
            route_go_xhr(environ)
            kite_id = kite_id_of(environ.get("QUERY_STRING", ""))
            if self.registry.get(kite_id) is None:
                return error(start_response, "404 Not Found", f"No kite {kite_id or '(no kiteID)'} is registered "
                             "with this proxy.")
            return self.public_side(environ, start_response)
        if path.startswith(TUNNEL_PREFIX + "/"):
            return self.tunnel_side(environ, start_response)
        return super().__call__(environ, start_response)

    def close(self) -> None:
        """Close the tunnels and every session, stop serving and registering."""
        self.relays.close()
        for tunnel in list(self._waiting.values()):
            tunnel.close(*NO_TUNNEL)
        self.public_side.close()
        self.tunnel_side.close()
        super().close()


# -- the command ------------------------------------------------------------------------


def _read(path: str, what: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError as exc:
        raise OSError(f"cannot read {what} file {path}: {exc.strerror}") from None


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m kite.proxy.tunnel", description=__doc__.split("\n\n")[0])
    add_common_flags(ap, DEFAULT_PORT)
    ap.add_argument("--public-host", default=DEFAULT_PUBLIC_HOST,
                    help=f"host:port in the URLs handed out; matches the certificate (default {DEFAULT_PUBLIC_HOST})")
    ap.add_argument("--public-key", default="", help="PEM file: public key of the pair that signs tunnel tokens")
    ap.add_argument("--private-key", default="",
                    help="PEM file: its private key (neither key given: a pair made at start)")
    ap.add_argument("--max-tunnels", type=int, default=MAX_TUNNELS,
                    help=f"open tunnels per kite at most (default {MAX_TUNNELS})")
    ap.add_argument("--version", nargs="?", const="", default=VERSION, metavar="VERSION",
                    help=f"the kite version to register (default {VERSION}); alone: print it and exit")
    args = ap.parse_args(argv)
    check_common_flags(ap, args)
    if bool(args.public_key) != bool(args.private_key):
        ap.error("give both --public-key and --private-key, or neither")
    if args.max_tunnels < 1:
        ap.error("--max-tunnels must be at least 1")
    return args


def build(args: argparse.Namespace) -> TunnelProxy:
    """The proxy of the options, its config from kite.key (required) and ``KITE_*``."""
    keys = (_read(args.private_key, "private key"), _read(args.public_key, "public key")) if args.private_key \
        else (None, None)
    return TunnelProxy(proxy_config(args), public_host=args.public_host, private_key=keys[0], public_key=keys[1],
                       idle_timeout=args.idle_timeout, max_tunnels=args.max_tunnels, version=args.version)


def main(argv: list[str] | None = None) -> int:
    """``python -m kite.proxy.tunnel``: 0 after SIGTERM/SIGINT, 1 when it cannot start."""
    args = parse_args(argv)
    if args.version == "":
        print(VERSION)
        return 0
    return run_command(NAME, args, lambda: build(args))


if __name__ == "__main__":
    sys.exit(main())
