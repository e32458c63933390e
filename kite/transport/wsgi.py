"""Serving helpers: gevent's WSGI server and a gunicorn worker, both WebSocket-ready.

Both use :class:`KiteWebSocketHandler`: gevent-websocket's handler (it does the
HTTP upgrade handshake, see :mod:`kite.transport.websocket`) plus ``TCP_NODELAY`` on every
accepted socket -- without it each small keep-alive response or frame can wait
~40 ms for a delayed ACK (Nagle).

gunicorn: ``gunicorn -k kite.server.GeventKiteWorker --graceful-timeout 5 app:app``
(long-lived WebSockets need a bounded graceful timeout).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import gevent
from gevent import ssl as gssl
from gevent.pywsgi import WSGIServer

from .websocket import set_nodelay

if TYPE_CHECKING:
    # gevent-websocket has no types: check our handler against its base, gevent's WSGIHandler.
    from gevent.pywsgi import WSGIHandler as WebSocketHandler
else:
    from geventwebsocket.handler import WebSocketHandler

log = logging.getLogger("kite.server")


access_log = logging.getLogger("kite.server.access")


class KiteWebSocketHandler(WebSocketHandler):
    """gevent-websocket's upgrade handler with ``TCP_NODELAY`` on the connection.

    Its diagnostics go to the ``kite.server`` logger and one access line per
    request to ``kite.server.access`` at DEBUG (gevent-websocket would install a
    logger of its own).
    """

    logger = log

    def handle(self) -> None:
        set_nodelay(self.socket)
        super().handle()

    def log_request(self) -> None:
        if access_log.isEnabledFor(logging.DEBUG):
            access_log.debug("%s", self.format_request())


class _CooperativeSSLContext:
    """Wraps accepted sockets with gevent's SSLSocket whatever kind of context was given.

    A stdlib :class:`ssl.SSLContext` (what ``ssl.create_default_context()`` gives
    in an unpatched process) would otherwise produce a blocking stdlib SSLSocket.
    """

    def __init__(self, context: Any):
        self.context = context

    def wrap_socket(self, sock: Any, server_side: bool = True, **kwargs: Any) -> Any:
        return gssl.SSLSocket(sock=sock, server_side=server_side, _context=self.context, **kwargs)


def make_server(
    app: Any, host: str = "127.0.0.1", port: int = 0, ssl_context: Any = None, reuse_port: bool = False,
    **kwargs: Any,
) -> WSGIServer:
    """A gevent WSGI server for ``app`` on ``host:port``, not yet started.

    ``host`` may be IPv4 or IPv6 (``"::1"``). Port 0 picks a free port: read
    ``server.server_port`` after ``server.start()``. With ``ssl_context`` (an
    :class:`ssl.SSLContext` holding the certificate) the server speaks TLS.
    ``reuse_port``: bind with ``SO_REUSEPORT``, so several processes serve one port and the
    kernel spreads the connections over them (the socket is bound here, not at ``start()``).
    Errors go to the ``kite.server`` logger, access lines to ``kite.server.access``. Extra keyword
    arguments go to :class:`gevent.pywsgi.WSGIServer`.
    """
    kwargs.setdefault("handler_class", KiteWebSocketHandler)
    kwargs.setdefault("log", access_log)
    kwargs.setdefault("error_log", log)
    # A SERVER_NAME avoids pywsgi's reverse DNS lookup (getfqdn) of the bind address.
    environ = {"SERVER_NAME": host or "0.0.0.0", **kwargs.pop("environ", {})}
    if ssl_context is not None:
        kwargs["ssl_context"] = _CooperativeSSLContext(ssl_context)
    listener: Any = (host, port)
    if reuse_port:
        listener = _reuse_port_listener(host, port)
    return WSGIServer(listener, app, environ=environ, **kwargs)


#: Connections waiting to be accepted, per listening socket (gevent's default).
LISTEN_BACKLOG = 256


def _reuse_port_listener(host: str, port: int) -> Any:
    """A listening socket on ``host:port`` with ``SO_REUSEADDR`` and ``SO_REUSEPORT``."""
    from gevent import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(LISTEN_BACKLOG)
    except BaseException:
        sock.close()
        raise
    return sock


try:  # gunicorn is optional: `import kite.transport.wsgi` must work without it
    from geventwebsocket.gunicorn.workers import GeventWebSocketWorker
except ImportError:  # pragma: no cover - depends on the installation
    GeventWebSocketWorker = None

if GeventWebSocketWorker is not None:

    # gevent-websocket and gunicorn have no types: the base class is Any to the checker.
    class GeventKiteWorker(GeventWebSocketWorker):  # type: ignore[misc]
        """gunicorn worker: gevent's pywsgi with :class:`KiteWebSocketHandler`."""

        wsgi_handler = KiteWebSocketHandler

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            gevent.spawn(self._close_sessions)

        def handle_quit(self, sig: int, frame: Any) -> None:
            super().handle_quit(sig, frame)
            gevent.spawn(self._close_sessions)

        def _close_sessions(self) -> None:
            """On shutdown, end open kite sessions (``c[3000,"Go away!"]``) instead of waiting
            the whole graceful timeout for websockets and pending polls."""
            close = getattr(self.wsgi, "close_sessions", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing sessions on shutdown failed")
