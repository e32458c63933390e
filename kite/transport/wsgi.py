"""Serving helpers: gevent's WSGI server and a gunicorn worker, both WebSocket-ready.

Both use :class:`KiteWebSocketHandler`: gevent-websocket's handler (it does the
HTTP upgrade handshake, see :mod:`kite.transport.websocket`) plus ``TCP_NODELAY`` on every
accepted socket -- without it each small keep-alive response or frame can wait
~40 ms for a delayed ACK (Nagle).

gunicorn: ``gunicorn -k kite.server.GeventKiteWorker --graceful-timeout 5 app:app``
(long-lived WebSockets need a bounded graceful timeout; on SIGTERM the worker drains the kite
for that less :data:`GRACEFUL_MARGIN`, see :class:`GeventKiteWorker`).

The handler also bounds what one HTTP peer can hold (gevent's pywsgi bounds none of it):
the time to send a request's head (slowloris), an idle keep-alive connection, the size of the
header block (431), and the time to send a body -- also the rest of a body the application did not
read, which pywsgi would otherwise read to its end, forever for an endless chunked one.
"""

from __future__ import annotations

import http.client
import logging
from io import BytesIO
from typing import TYPE_CHECKING, Any

import gevent
from gevent import pywsgi
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

#: Seconds a client has to send a request's line and headers, counted from the connection (or,
#: on a kept-alive one, from its first byte). A browser or a kite sends them in one packet; ten
#: seconds covers slow links, and a slowloris peer trickling header bytes is dropped after it.
HEADER_TIMEOUT = 10.0
#: Seconds a kept-alive connection may sit idle between requests (nginx uses 75 s). Longer than a
#: kite's 10 s heartbeats and Kontrol's HTTP heartbeats, so their connections stay reused.
KEEPALIVE_TIMEOUT = 75.0
#: Seconds a client has to send a request body, counted from the end of its headers: 16 MiB (the
#: largest message) at ~300 KB/s. A body trickled slower, or never ending, closes the connection.
BODY_TIMEOUT = 60.0
#: Bytes of header lines accepted per request (nginx: 4 x 8 KiB by default); more is answered 431.
#: The request line has its own cap, gevent's MAX_REQUEST_LINE (8 KiB, else 414).
MAX_HEADER_BYTES = 64 * 1024
#: Bytes of an unread request body the server still reads and drops after the answer, so that the
#: connection can be kept alive; beyond that it is closed instead (it may be endless).
MAX_DISCARD_BYTES = 64 * 1024

_HEADERS_TOO_LARGE_RESPONSE = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
)
_REQUEST_TIMEOUT_RESPONSE = b"HTTP/1.1 408 Request Timeout\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"
#: gevent's "the client sent a broken body" error: it makes pywsgi log one line, answer 400 and close.
_InvalidClientInput: type[OSError] = getattr(pywsgi, "_InvalidClientInput", OSError)
#: pywsgi's parser of a request's header lines (``http.client.parse_headers``, keeping a bad line's status).
_headers_factory: Any = getattr(pywsgi, "headers_factory")  # noqa: B009 - not in the type stubs


class _HeaderBlockReader:
    """The ``readline`` that parsing headers uses, counting bytes against :data:`MAX_HEADER_BYTES`."""

    def __init__(self, rfile: Any, limit: int):
        self._rfile = rfile
        self._left = limit

    def readline(self, size: int = -1) -> bytes:
        room = self._left + 1
        line: bytes = self._rfile.readline(room if size is None or size < 0 else min(size, room))
        self._left -= len(line)
        if self._left < 0:
            raise http.client.LineTooLong("header block")
        return line


class _BoundedInput(pywsgi.Input):
    """``wsgi.input`` whose reads end at a deadline (:data:`BODY_TIMEOUT` after the headers), and
    which drops at most :data:`MAX_DISCARD_BYTES` of what the application left unread."""

    __slots__ = ("deadline",)

    def __init__(self, rfile: Any, content_length: int | None, socket: Any, chunked_input: bool, deadline: float):
        super().__init__(rfile, content_length, socket=socket, chunked_input=chunked_input)
        self.deadline = deadline

    def _bounded(self, method: Any, *args: Any) -> Any:
        timeout = gevent.Timeout(max(0.0, self.deadline - gevent.get_hub().loop.now()))
        timeout.start()
        try:
            return method(*args)
        except gevent.Timeout as exc:
            if exc is not timeout:
                raise
            raise _InvalidClientInput("request body not received in time") from None
        finally:
            timeout.close()

    def read(self, length: int | None = None) -> bytes:
        result: bytes = self._bounded(super().read, length)
        return result

    def readline(self, size: int | None = None) -> bytes:
        result: bytes = self._bounded(super().readline, size)
        return result

    def _discard(self) -> None:
        content_length = self.content_length or 0
        if not self.chunked_input and content_length - self.position > MAX_DISCARD_BYTES:
            raise _InvalidClientInput(f"request body not read and over {MAX_DISCARD_BYTES} bytes")
        left = MAX_DISCARD_BYTES
        while left > 0:
            if not self.read(min(left, 16384)):
                return
            left -= 16384
        raise _InvalidClientInput(f"request body not read and over {MAX_DISCARD_BYTES} bytes")


class KiteWebSocketHandler(WebSocketHandler):
    """gevent-websocket's upgrade handler with ``TCP_NODELAY`` on the connection, and bounds.

    The bounds (see the module docstring) are :data:`HEADER_TIMEOUT`, :data:`KEEPALIVE_TIMEOUT`,
    :data:`BODY_TIMEOUT` and :data:`MAX_HEADER_BYTES`, or the server's attributes of the same
    names in lower case (:func:`make_server` sets them).

    Its diagnostics go to the ``kite.server`` logger and one access line per
    request to ``kite.server.access`` at DEBUG (gevent-websocket would install a
    logger of its own).
    """

    logger = log
    _requests = 0  # requests read on this connection so far
    _timers: dict[str, gevent.Timeout] | None = None  # "head" and "idle": made once per connection
    _head_too_large = False

    def _limit(self, name: str, default: float) -> float:
        value: float = getattr(self.server, name, default)
        return value

    def handle(self) -> None:
        set_nodelay(self.socket)
        super().handle()

    def _start_timer(self, which: str) -> gevent.Timeout:
        """Start the connection's ``head`` (:data:`HEADER_TIMEOUT`) or ``idle`` (:data:`KEEPALIVE_TIMEOUT`)
        timer: each made once for the connection's life (a new ``gevent.Timeout`` per request cost
        ~5 µs, a heartbeat's whole handling ~200)."""
        if self._timers is None:
            self._timers = {
                "head": gevent.Timeout(self._limit("header_timeout", HEADER_TIMEOUT)),
                "idle": gevent.Timeout(self._limit("keepalive_timeout", KEEPALIVE_TIMEOUT)),
            }
        timer = self._timers[which]
        timer.start()
        return timer

    def handle_one_request(self) -> Any:
        """One request, its head read within :data:`HEADER_TIMEOUT` (after :data:`KEEPALIVE_TIMEOUT`
        of idleness at most); a peer too slow is answered 408 (or dropped, if it sent nothing)."""
        kept_alive = bool(self._requests)
        # A new connection has HEADER_TIMEOUT from its start for its whole head; a kept-alive one
        # may idle KEEPALIVE_TIMEOUT first, then has HEADER_TIMEOUT from the request's first byte.
        timer = self._start_timer("idle" if kept_alive else "head")
        try:
            try:
                if not self.rfile.peek(1):  # EOF: the client is done
                    return None
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                log.debug("dropping idle connection from %s", self.client_address)
                return None
            except OSError:
                return None
            if kept_alive:
                timer.cancel()
                timer = self._start_timer("head")
            self._requests += 1
            try:
                return super().handle_one_request()
            except gevent.Timeout as exc:
                if exc is not timer:
                    raise
                log.info("request head from %s not received in time: closing", self.client_address)
                self.close_connection = True
                return ("408", _REQUEST_TIMEOUT_RESPONSE)
        finally:
            timer.cancel()

    def read_request(self, raw_requestline: str) -> Any:
        try:
            result = super().read_request(raw_requestline)
        finally:
            if self._timers is not None:
                self._timers["head"].cancel()  # the head is in: the application's time is its own
        return result

    def MessageClass(self, fp: Any, *args: Any) -> Any:  # noqa: N802 - pywsgi's name
        """The request's headers, read through a reader capped at :data:`MAX_HEADER_BYTES`."""
        reader = _HeaderBlockReader(fp, int(self._limit("max_header_bytes", MAX_HEADER_BYTES)))
        try:
            message = _headers_factory(reader)
        except http.client.HTTPException:  # more header lines than http.client's 100
            message = _headers_factory(BytesIO())
            message.status = "Too many headers"
        if message.status:
            self._head_too_large = True
        return message

    def _handle_client_error(self, ex: BaseException) -> Any:
        if self._head_too_large:
            self._head_too_large = False
            self.log_error("(from %s) request header fields too large", self.client_address)
            return ("431", _HEADERS_TOO_LARGE_RESPONSE)
        return super()._handle_client_error(ex)  # type: ignore[misc]

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        plain = self.wsgi_input
        assert plain is not None  # super().get_environ() made it
        if not plain.chunked_input and not plain.content_length:
            return environ  # no body to wait for (a GET, a heartbeat): nothing to bound
        bounded = _BoundedInput(plain.rfile, plain.content_length, plain.socket, plain.chunked_input,
                                gevent.get_hub().loop.now() + self._limit("body_timeout", BODY_TIMEOUT))
        self.wsgi_input = bounded
        if environ.get("wsgi.input") is plain:
            environ["wsgi.input"] = bounded
        return environ

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
    *, header_timeout: float = HEADER_TIMEOUT, keepalive_timeout: float = KEEPALIVE_TIMEOUT,
    body_timeout: float = BODY_TIMEOUT, max_header_bytes: int = MAX_HEADER_BYTES,
    **kwargs: Any,
) -> WSGIServer:
    """A gevent WSGI server for ``app`` on ``host:port``, not yet started.

    ``host`` may be IPv4 or IPv6 (``"::1"``). Port 0 picks a free port: read
    ``server.server_port`` after ``server.start()``. With ``ssl_context`` (an
    :class:`ssl.SSLContext` holding the certificate) the server speaks TLS.
    ``reuse_port``: bind with ``SO_REUSEPORT``, so several processes serve one port and the
    kernel spreads the connections over them (the socket is bound here, not at ``start()``).
    ``header_timeout``, ``keepalive_timeout``, ``body_timeout`` (seconds) and ``max_header_bytes``
    bound what one HTTP peer can hold (:data:`HEADER_TIMEOUT` and the rest).
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
    server = WSGIServer(listener, app, environ=environ, **kwargs)
    # Read by KiteWebSocketHandler through its server.
    server.header_timeout = header_timeout  # type: ignore[attr-defined]
    server.keepalive_timeout = keepalive_timeout  # type: ignore[attr-defined]
    server.body_timeout = body_timeout  # type: ignore[attr-defined]
    server.max_header_bytes = max_header_bytes  # type: ignore[attr-defined]
    return server


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

    #: Seconds of gunicorn's ``--graceful-timeout`` the worker keeps for itself after a drain: its
    #: run loop looks at its open connections once a second, then stops the server (up to 1 s more).
    GRACEFUL_MARGIN = 2.0

    # gevent-websocket and gunicorn have no types: the base class is Any to the checker.
    class GeventKiteWorker(GeventWebSocketWorker):  # type: ignore[misc]
        """gunicorn worker: gevent's pywsgi with :class:`KiteWebSocketHandler`, and a graceful drain.

        SIGTERM (gunicorn's graceful stop; the master sends it to every worker) runs the app's
        ``shutdown(timeout)`` -- :meth:`kite.Kite.shutdown`: deregister, refuse new calls, let calls
        in flight finish, close the sessions with a close frame -- within the graceful timeout less
        :data:`GRACEFUL_MARGIN`, while gunicorn stops accepting and waits for the connections to end.
        A second SIGTERM, or SIGINT/SIGQUIT (gunicorn's quick stop), closes the app at once. An app
        without ``shutdown`` has its sessions closed at once (``close_sessions``).
        """

        wsgi_handler = KiteWebSocketHandler
        _stop_signals = 0

        def handle_exit(self, sig: int, frame: Any) -> None:
            super().handle_exit(sig, frame)
            self._stop_signals += 1
            gevent.spawn(self._drain if self._stop_signals == 1 else self._close_now)

        def handle_quit(self, sig: int, frame: Any) -> None:
            gevent.spawn(self._close_now)
            super().handle_quit(sig, frame)

        def _drain(self) -> None:
            shutdown = getattr(self.wsgi, "shutdown", None)
            if shutdown is None:
                self._close_sessions()
                return
            timeout = max(0.0, float(self.cfg.graceful_timeout) - GRACEFUL_MARGIN)
            try:
                shutdown(timeout)
            except Exception:
                log.exception("draining on shutdown failed")
                self._close_sessions()

        def _close_now(self) -> None:
            close = getattr(self.wsgi, "close", None)
            if close is None:
                self._close_sessions()
                return
            try:
                close()
            except Exception:
                log.exception("closing on shutdown failed")

        def _close_sessions(self) -> None:
            """End open kite sessions (``c[3000,"Go away!"]``) instead of waiting the whole graceful
            timeout for websockets and pending polls."""
            close = getattr(self.wsgi, "close_sessions", None)
            if close is not None:
                try:
                    close()
                except Exception:
                    log.exception("closing sessions on shutdown failed")
