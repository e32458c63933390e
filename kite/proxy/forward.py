"""``/proxy/<kite id>/<rest>``: the reverse proxy's public side (PROTOCOL.md §8.4).

:class:`Forwarder` is the WSGI application for everything under ``/proxy/``. It looks the
kite id up in the :class:`~kite.proxy.registry.Registry` and forwards ``<rest>`` to
``<kite URL>/<rest>``:

* WebSocket upgrades (SockJS ``/<server>/<session>/websocket`` and raw ``/websocket``) become
  a :class:`~kite.proxy.relay.Relay` to ``ws://<backend>/kite/...``. The backend is dialed
  **before** the caller's upgrade is accepted (:class:`ForwardingHandler` calls
  :meth:`Forwarder.before_upgrade`, the proxy's ``upgrade_gate``), so a caller of an unknown or dead kite gets an HTTP
  error (404, 502) instead of a WebSocket that closes at once;
* every other request goes through the :class:`~kite.proxy.httpforward.HttpForwarder`.

Only SockJS paths are forwarded (``/``, ``/info``, ``/websocket``, ``/iframe*.html`` and
``/<server>/<session>/<transport>``); anything else is a 404, so a registered URL cannot
be used to reach other paths of the host it names.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

from gevent.pywsgi import WSGIHandler

from kite.transport import wsclient
from kite.transport.websocket import MAX_MESSAGE_SIZE, WebSocket
from kite.transport.wsgi import KiteWebSocketHandler

from .httpforward import CONNECT_TIMEOUT, HttpForwarder, error
from .relay import CLOSE_BAD_GATEWAY, Relay, Relays

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

    from .registry import Backend, Registry

log = logging.getLogger("kite.proxy")

#: The path prefix of forwarded requests.
PROXY_PREFIX = "/proxy"
_PATH = re.compile(r"^/proxy/([^/]+)(/.*)?$")
_SEGMENT = r"[^/.]+"  # SockJS {server} and {session}
_TRANSPORTS = "websocket|xhr|xhr_send|xhr_streaming|eventsource|htmlfile|jsonp|jsonp_send"
#: The SockJS paths forwarded under ``/proxy/<id>``.
_FORWARDED = re.compile(rf"^(?:/?|/info|/websocket|/iframe[^/]*\.html|/{_SEGMENT}/{_SEGMENT}/(?:{_TRANSPORTS}))$")
_WEBSOCKET = re.compile(rf"^(?:/websocket|/{_SEGMENT}/{_SEGMENT}/websocket)$")
#: Keys of the WSGI environ between :meth:`Forwarder.before_upgrade` and the application.
UPSTREAM_KEY = "kite.proxy.upstream"
REFUSAL_KEY = "kite.proxy.refusal"


@dataclass
class Route:
    """Where a ``/proxy/`` request goes: its backend and the path under the kite URL."""

    backend: Backend
    rest: str
    websocket: bool

    def who(self, environ: dict[str, Any]) -> str:
        """``<caller addr> -> kite <id>``, for logs."""
        addr, port = environ.get("REMOTE_ADDR", "?"), environ.get("REMOTE_PORT", "")
        return f"{addr}:{port} -> kite {self.backend.kite_id}" if port else f"{addr} -> kite {self.backend.kite_id}"


@dataclass
class Upstream:
    """A backend WebSocket dialed for a caller whose upgrade is under way."""

    ws: WebSocket
    route: Route
    url: str


def _is_upgrade(environ: dict[str, Any]) -> bool:
    return environ.get("REQUEST_METHOD") == "GET" and environ.get("HTTP_UPGRADE", "").lower() == "websocket"


class Forwarder:
    """The WSGI application of ``/proxy/``; see the module docstring."""

    def __init__(self, registry: Registry, relays: Relays, http: HttpForwarder,
                 connect_timeout: float = CONNECT_TIMEOUT, max_message_size: int = MAX_MESSAGE_SIZE):
        self.registry = registry
        self.relays = relays
        self.http = http
        #: Seconds the backend gets to accept a WebSocket (TCP and handshake).
        self.connect_timeout = connect_timeout
        self.max_message_size = max_message_size

    def route(self, environ: dict[str, Any]) -> Route | tuple[str, str]:
        """The route of a ``/proxy/`` request, or the ``(status, text)`` refusing it."""
        match = _PATH.match(environ.get("PATH_INFO", ""))
        if match is None:
            return "404 Not Found", "404 page not found"
        kite_id, rest = match.group(1), match.group(2) or ""
        backend = self.registry.get(kite_id)
        if backend is None:
            return "404 Not Found", f"No kite {kite_id} is registered with this proxy."
        if not _FORWARDED.match(rest):
            return "404 Not Found", "404 page not found"
        return Route(backend, rest, bool(_WEBSOCKET.match(rest)))

    # -- WebSockets ----------------------------------------------------------------------

    def before_upgrade(self, environ: dict[str, Any]) -> bool:
        """Dial the backend of a WebSocket upgrade before the caller's is accepted.

        Returns ``True`` to go on with the upgrade (the backend WebSocket waits in the
        environ), ``False`` to answer with plain HTTP (the refusal waits in the environ).
        """
        route = self.route(environ)
        if isinstance(route, tuple):
            environ[REFUSAL_KEY] = route
            return False
        if not route.websocket:
            environ[REFUSAL_KEY] = ("404 Not Found", "404 page not found")
            return False
        upstream = self._dial(environ, route)
        if isinstance(upstream, tuple):
            environ[REFUSAL_KEY] = upstream
            return False
        environ[UPSTREAM_KEY] = upstream
        return True

    def after_request(self, environ: dict[str, Any]) -> None:
        """Drop a backend WebSocket the application never took (the upgrade failed)."""
        upstream = environ.pop(UPSTREAM_KEY, None)
        if upstream is not None:
            upstream.ws.abort()

    def _dial(self, environ: dict[str, Any], route: Route) -> Upstream | tuple[str, str]:
        backend = route.backend
        query = environ.get("QUERY_STRING", "")
        url = backend.ws_base + route.rest + (f"?{query}" if query else "")
        headers = {
            # As Go's proxy: the backend sees an Origin of its own host (no origin is refused).
            "Origin": f"http://{urlsplit(backend.ws_base).netloc}",
            "X-Forwarded-For": environ.get("REMOTE_ADDR", ""),
        }
        try:
            ws = wsclient.connect(url, headers=headers, timeout=self.connect_timeout,
                                  max_message_size=self.max_message_size)
        except wsclient.HandshakeError as exc:
            log.warning("%s: the backend refused the WebSocket %s: %s", route.who(environ), url, exc)
            if exc.status_code is not None and 400 <= exc.status_code < 500:
                return f"{exc.status_code} Refused", "The kite refused the WebSocket."
            return "502 Bad Gateway", "The kite cannot be reached."
        except (OSError, ValueError) as exc:  # refused, reset, timed out (TimeoutError is an OSError)
            log.warning("%s: cannot dial %s: %s", route.who(environ), url, exc)
            return "502 Bad Gateway", "The kite cannot be reached."
        return Upstream(ws, route, url)

    def _relay(self, environ: dict[str, Any], start_response: StartResponse, upstream: Upstream) -> list[bytes]:
        caller = WebSocket.from_environ(environ, max_message_size=self.max_message_size)
        if caller is None:
            upstream.ws.abort()
            return error(start_response, "400 Bad Request", 'Can "Upgrade" only to "WebSocket".')
        self.relays.run(Relay(caller, upstream.ws, upstream.route.backend, upstream.url))
        return []

    def _late_relay(self, environ: dict[str, Any], start_response: StartResponse, route: Route) -> list[bytes]:
        """A WebSocket another server's handler upgraded already: dial the backend now, and
        close the caller with 1014 when it cannot be reached."""
        upstream = self._dial(environ, route)
        if isinstance(upstream, Upstream):
            return self._relay(environ, start_response, upstream)
        caller = WebSocket.from_environ(environ, max_message_size=self.max_message_size)
        if caller is not None:
            caller.close(CLOSE_BAD_GATEWAY, upstream[1])
            caller.wait_closed()
        return []

    # -- WSGI ------------------------------------------------------------------------------

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        refusal = environ.pop(REFUSAL_KEY, None)
        if refusal is not None:
            return error(start_response, *refusal)
        upstream = environ.pop(UPSTREAM_KEY, None)
        if upstream is not None:
            return self._relay(environ, start_response, upstream)
        route = self.route(environ)
        if isinstance(route, tuple):
            return error(start_response, *route)
        if route.websocket and environ.get("wsgi.websocket") is not None:
            return self._late_relay(environ, start_response, route)
        return self.http.forward(environ, start_response, route.backend.http_base + route.rest, route.who(environ))


class UpgradeGate(Protocol):
    """What :class:`ForwardingHandler` asks before it accepts a ``/proxy/`` WebSocket upgrade."""

    def before_upgrade(self, environ: dict[str, Any]) -> bool:
        """``True`` to accept the upgrade; ``False`` to answer with plain HTTP instead."""

    def after_request(self, environ: dict[str, Any]) -> None:
        """The request is over (release what :meth:`before_upgrade` prepared)."""


class ForwardingHandler(KiteWebSocketHandler):
    """The WSGI handler of the proxies: asks the application's ``upgrade_gate``
    (:class:`UpgradeGate`; the reverse proxy's :class:`Forwarder` dials the backend there)
    before accepting the upgrade of a ``/proxy/`` WebSocket, so a caller of an unknown or
    unreachable kite gets an HTTP error instead of a WebSocket that closes at once.

    Other requests, and applications without a gate, are handled as by
    :class:`~kite.transport.wsgi.KiteWebSocketHandler`.
    """

    def run_application(self) -> None:
        environ = self.environ
        assert environ is not None  # set by the handler before it runs the application
        gate: UpgradeGate | None = getattr(self.application, "upgrade_gate", None)
        proxied = environ.get("PATH_INFO", "").startswith(PROXY_PREFIX + "/")
        if gate is None or not proxied or not _is_upgrade(environ):
            super().run_application()
            return
        if not gate.before_upgrade(environ):
            WSGIHandler.run_application(self)  # a plain HTTP answer: no upgrade
            return
        try:
            super().run_application()
        finally:
            gate.after_request(environ)
