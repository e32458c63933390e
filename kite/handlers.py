"""The built-in ``kite.*`` methods every kite serves (PROTOCOL.md §6.4).

All but ``kite.ping`` require authentication, whatever the kite's config says
later (Go registers them with the default config). Interactive ones refuse
clearly when the process has no terminal instead of hanging a server.

``kite.tunnel`` is accepted only from a tunnel proxy this kite registered with
(:meth:`~kite.Kite.register_to_tunnel`): anyone else could make the kite dial an
address of their choosing. The connection it dials is served like an incoming one,
so the calls that come through the tunnel are authenticated like direct calls
(the Go kite serves them as a dialed connection and skips authentication).
"""

from __future__ import annotations

import getpass
import logging
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import gevent

from .errors import ArgumentError, AuthenticationError, GenericError, SendError
from .method import HandlerFunc, Method
from .systeminfo import system_info
from .transport.sockjs.client import DialError, dial_sockjs_websocket

if TYPE_CHECKING:
    from .kite import Kite
    from .request import Request

log = logging.getLogger("kite.handlers")

#: Seconds ``kite.tunnel`` may take to dial the tunnel proxy (which waits 4 s for the answer).
TUNNEL_DIAL_TIMEOUT = 4.0


def _ping(r: Request) -> str:
    return "pong"


def _system_info(r: Request) -> dict[str, Any]:
    return system_info()


def _heartbeat(r: Request) -> None:
    """``[interval, ping]``: call ``ping()`` now and every ``interval`` seconds (one ticker per kite)."""
    if r.args.raw is None:
        raise ArgumentError("empty heartbeat request")
    interval_value, ping_value = r.args.slice_of_length(2)
    interval = int(interval_value.must_float64())
    if interval < 1:
        raise ArgumentError(f"heartbeat interval must be at least 1 second, got {interval_value.raw!r}")
    ping = ping_value.must_function()
    ping()  # an error here is the call's error
    kite = r.local_kite
    if kite._heartbeat is not None:
        kite._heartbeat.kill(block=False)
    kite._heartbeat = gevent.spawn(_heartbeat_loop, ping, interval)
    return None


def _heartbeat_loop(ping: Callable[[], Any], interval: int) -> None:
    while True:
        gevent.sleep(interval)
        try:
            ping()
        except SendError:
            return  # the connection is gone
        except Exception:
            log.exception("heartbeat ping failed")
            return


def _log(r: Request) -> None:
    message = r.args.one().must_string()
    r.local_kite.log.info("%s: %s", r.client.kite.name, message)
    return None


def _print(r: Request) -> int:
    text = r.args.one().must_string()
    sys.stdout.write(text)
    sys.stdout.flush()
    return len(text.encode())


def _require_terminal(method: str) -> None:
    if not (sys.stdin and sys.stdin.isatty()):
        raise GenericError(f"{method}: this kite has no terminal to read from")


def _prompt(r: Request) -> str:
    text = r.args.one().must_string()
    _require_terminal("kite.prompt")
    sys.stdout.write(text)
    sys.stdout.flush()
    words = sys.stdin.readline().split()
    return words[0] if words else ""


def _get_pass(r: Request) -> str:
    text = r.args.one().must_string()
    _require_terminal("kite.getPass")
    return getpass.getpass(text)


def _tunnel(r: Request) -> None:
    """``[{"url": "ws://<proxy>/tunnel/<server>/<session>/websocket?token=…"}]``: dial that URL
    (a SockJS WebSocket) and serve it like an incoming session, in a greenlet of its own."""
    kite = r.local_kite
    if r.client not in kite._tunnel_proxies:
        raise AuthenticationError("kite.tunnel: only a tunnel proxy this kite registered with may open tunnels")
    options = r.args.one().must_map()
    # Go unmarshals into a struct field URL, which matches the key case-insensitively.
    url = next((v for k, v in options.items() if k.lower() == "url"), None)
    if not isinstance(url, str) or urlsplit(url).scheme.lower() not in ("ws", "wss"):
        raise ArgumentError('kite.tunnel: expected [{"url": "ws(s)://…"}]')
    try:
        session = dial_sockjs_websocket(url, timeout=TUNNEL_DIAL_TIMEOUT, verify=r.client.verify)
    except DialError as exc:
        raise GenericError(f"kite.tunnel: {exc}") from None
    log.debug("serving a tunnel from %s", session.remote_addr)
    gevent.spawn(kite._serve_session, session)


BUILTINS = {
    "kite.ping": (_ping, False),
    "kite.systemInfo": (_system_info, True),
    "kite.heartbeat": (_heartbeat, True),
    "kite.log": (_log, True),
    "kite.print": (_print, True),
    "kite.prompt": (_prompt, True),
    "kite.getPass": (_get_pass, True),
    "kite.tunnel": (_tunnel, True),
}


def register(kite: Kite) -> None:
    """Add the built-in methods to ``kite``."""
    for name, (fn, auth) in BUILTINS.items():
        kite._methods[name] = Method(name, HandlerFunc(fn), auth_required=auth)
