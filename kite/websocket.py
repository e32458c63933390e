"""RFC 6455 WebSocket connections: wsproto frames on gevent sockets, both sides.

gevent-websocket does the server's HTTP upgrade handshake (its handler is the
``handler_class`` of our WSGI server and of the gunicorn worker), but its frame
code mangles close codes, accepts unmasked client frames and has no size cap.
So once the handshake is done, :meth:`WebSocket.from_environ` takes the
connection over and drives it with :mod:`wsproto`. On the dialing side,
:func:`connect` does the handshake with wsproto too.

Only gevent's own ``socket`` and ``ssl`` modules are used, so everything here is
cooperative in a process that never called ``monkey.patch_all()``.
"""

from __future__ import annotations

import logging
import socket as _socket
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import gevent
from gevent import socket as gsocket
from gevent import ssl as gssl
from gevent.event import Event
from gevent.lock import Semaphore
from wsproto import WSConnection
from wsproto.connection import Connection, ConnectionState, ConnectionType
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.utilities import LocalProtocolError as _WsLocalError
from wsproto.utilities import RemoteProtocolError as _WsRemoteError

log = logging.getLogger("kite.websocket")

#: Largest message accepted, in bytes (16 MiB). Far above any real dnode message
#: (a getKites result listing thousands of kites is a few MiB), yet small enough
#: that one peer cannot make us buffer unbounded memory. Bigger → close 1009.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Bytes asked for per socket read: big enough to take a burst in one syscall.
READ_SIZE = 64 * 1024
#: Seconds we wait for the peer's close reply (or for a busy reader to see it)
#: before dropping the TCP connection. A live peer answers within one RTT.
CLOSE_TIMEOUT = 2.0
#: Cap on a rejected handshake's response body we keep for the error message.
MAX_REJECT_BODY = 64 * 1024

# RFC 6455 §7.4.1 close codes we use.
CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_NO_STATUS = 1005
CLOSE_ABNORMAL = 1006
CLOSE_INVALID_DATA = 1007
CLOSE_TOO_BIG = 1009


class WebSocketClosed(ConnectionError):
    """Raised when sending on a WebSocket whose closing has begun or whose socket broke."""


class HandshakeError(ConnectionError):
    """The server did not accept the WebSocket upgrade.

    ``status_code`` is the HTTP status it answered (``None`` when the exchange
    broke before a status line), ``headers`` and ``body`` what came with it.
    """

    def __init__(
        self,
        message: str,
        status_code: int | None = None,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
    ):
        super().__init__(message)
        self.status_code = status_code
        self.headers = headers or []
        self.body = body


def set_nodelay(sock: Any) -> None:
    """Turn Nagle off on a TCP socket (small frames must not wait ~40 ms for an ACK)."""
    try:
        sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)
    except (OSError, AttributeError):
        pass  # not TCP (a unix socket, a test double): nothing to do


class WebSocket:
    """One WebSocket connection (server or client side) over a gevent socket.

    Greenlet-safe: sends are serialised by a lock, so any greenlet may send while
    one greenlet reads with :meth:`recv_text`. Pings are answered automatically,
    the peer's close is answered, and protocol violations close the connection
    with the RFC code (1002 protocol error / unmasked frame, 1007 invalid UTF-8,
    1009 too big).

    Build one with :meth:`from_environ` (server) or :func:`connect` (client).
    """

    def __init__(
        self,
        sock: Any,
        connection: Connection,
        *,
        reader: Callable[[int], bytes] | None = None,
        owns_socket: bool = True,
        max_message_size: int = MAX_MESSAGE_SIZE,
        remote_addr: str = "",
    ):
        self._sock = sock
        self._conn = connection
        self._read = reader if reader is not None else sock.recv
        self._owns_socket = owns_socket
        self.max_message_size = max_message_size
        #: ``"host:port"`` of the peer, for logs.
        self.remote_addr = remote_addr
        #: Close code/reason: the peer's (or ours when we closed first); 1006 when TCP just ended.
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._send_lock = Semaphore()
        self._recv_lock = Semaphore()
        self._parts: list[Any] = []
        self._size = 0
        self._read_done = False  # no more messages will be returned
        self._failed = False  # we failed the connection; incoming bytes are garbage
        self._closer: gevent.Greenlet | None = None
        self._torn_down = Event()

    # -- construction ---------------------------------------------------------------

    @classmethod
    def from_environ(cls, environ: Mapping[str, Any], max_message_size: int = MAX_MESSAGE_SIZE) -> WebSocket | None:
        """Take over the connection gevent-websocket's handler upgraded, or ``None``.

        Returns ``None`` when the request is not an accepted WebSocket upgrade
        (no ``wsgi.websocket`` in the environ). Reading goes through the handler's
        buffered ``rfile`` -- it may already hold frames the client sent right
        after its handshake -- and writing through the raw socket. gevent-websocket's
        own object is marked closed, so its handler neither reads frames nor sends
        its own close frame after the application returns.

        The WSGI application must not return before the connection is over (call
        :meth:`close` and :meth:`wait_closed`): the handler closes the socket then.
        """
        gws = environ.get("wsgi.websocket")
        handler = getattr(gws, "handler", None)
        sock = getattr(handler, "socket", None)
        rfile = getattr(handler, "rfile", None)
        if gws is None or sock is None or rfile is None:
            return None
        gws.closed = True  # makes gevent-websocket's close() in run_websocket a no-op
        set_nodelay(sock)
        addr = environ.get("REMOTE_ADDR", "")
        port = environ.get("REMOTE_PORT", "")
        return cls(
            sock,
            Connection(ConnectionType.SERVER),
            reader=rfile.read1,
            owns_socket=False,
            max_message_size=max_message_size,
            remote_addr=f"{addr}:{port}" if port else addr,
        )

    # -- state ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closing has begun from either side (no more sends possible)."""
        return self._conn.state is not ConnectionState.OPEN or self._torn_down.is_set()

    def wait_closed(self, timeout: float | None = CLOSE_TIMEOUT) -> bool:
        """Block until the TCP connection is released; True if it was within ``timeout``."""
        return self._torn_down.wait(timeout)

    # -- sending --------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send one text message. Raises :class:`WebSocketClosed` once closing has begun."""
        self._send_events((TextMessage(data=text),))

    def send_texts(self, texts: Iterable[str]) -> None:
        """Send several text messages, one frame each, in a single socket write."""
        self._send_events([TextMessage(data=text) for text in texts])

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (at most 125 bytes of payload); the peer's pong is ignored."""
        self._send_events((Ping(payload=payload),))

    def _send_events(self, events: Iterable[Any]) -> None:
        with self._send_lock:
            if self._conn.state is not ConnectionState.OPEN or self._torn_down.is_set():
                raise WebSocketClosed(f"WebSocket to {self.remote_addr or '?'} is closed")
            data = b"".join([self._conn.send(event) for event in events])
            try:
                # One send() usually takes the whole frame; sendall() would first ask
                # the kernel for SO_SNDBUF (an extra syscall per frame in gevent).
                sent = self._sock.send(data)
                if sent < len(data):
                    self._sock.sendall(memoryview(data)[sent:])
            except (OSError, ValueError) as exc:
                self._teardown()
                raise WebSocketClosed(f"WebSocket to {self.remote_addr or '?'} broke: {exc}") from exc

    def _send_close(self, code: int, reason: str = "") -> None:
        """Send our close frame if the state allows it; never raises."""
        with self._send_lock:
            if self._conn.state not in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
                return
            try:
                data = self._conn.send(CloseConnection(code=code, reason=reason or None))
            except (_WsLocalError, TypeError, ValueError):
                return
            try:
                self._sock.sendall(data)
            except (OSError, ValueError):
                self._teardown()

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake (idempotent, does not block).

        Sends a close frame, then releases the TCP connection once the peer
        answers, or after :data:`CLOSE_TIMEOUT`.
        """
        if self._torn_down.is_set():
            return
        if self._conn.state is ConnectionState.OPEN and self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._send_close(code, reason)
        self._start_closer()

    def abort(self) -> None:
        """Drop the TCP connection now, without (further) closing handshake."""
        self._teardown()

    # -- receiving ------------------------------------------------------------------

    def recv_text(self) -> str | None:
        """Block for the next message; ``None`` once the connection is closed.

        Binary messages are decoded as UTF-8 (SockJS clients may send them);
        invalid UTF-8 closes the connection with 1007.
        """
        with self._recv_lock:
            while not self._read_done:
                for event in self._conn.events():
                    result = self._on_event(event)
                    if result is not None or self._read_done:
                        return result
                data = self._read_some()
                if not data:
                    if self.close_code is None:
                        self.close_code = CLOSE_ABNORMAL
                    self._read_done = True
                    self._teardown()
                    break
                self._feed(data)
        return None

    def _read_some(self) -> bytes:
        try:
            return self._read(READ_SIZE)
        except (OSError, ValueError):  # reset, or the socket was torn down under us
            return b""

    def _feed(self, data: bytes) -> None:
        try:
            self._conn.receive_data(data)
        except _WsLocalError:  # state CLOSED: nothing more to parse
            self._read_done = True

    def _on_event(self, event: Any) -> str | None:
        """Handle one wsproto event; a finished message is returned as text."""
        if isinstance(event, (TextMessage, BytesMessage)):
            return self._on_data(event)
        if isinstance(event, Ping):
            try:
                self._send_events((Pong(payload=event.payload),))
            except WebSocketClosed:
                pass
            return None
        if isinstance(event, CloseConnection):
            if self._conn.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                self._on_peer_close(event)
            else:  # wsproto found a protocol violation (its ParseFailed)
                self._fail(event.code, event.reason or "protocol error")
        return None  # Pong and anything else: ignored

    def _on_data(self, event: TextMessage | BytesMessage) -> str | None:
        chunk = event.data
        if isinstance(chunk, str):
            # len() counts characters; UTF-8 bytes are only counted when not ASCII.
            self._size += len(chunk) if chunk.isascii() else len(chunk.encode("utf-8", "surrogatepass"))
        else:
            self._size += len(chunk)
        if self._size > self.max_message_size:
            self._fail(CLOSE_TOO_BIG, f"message bigger than {self.max_message_size} bytes")
            return None
        self._parts.append(chunk)
        if not event.message_finished:
            return None
        parts, self._parts, self._size = self._parts, [], 0
        if isinstance(event, TextMessage):
            return parts[0] if len(parts) == 1 else "".join(parts)
        try:
            return b"".join(parts).decode("utf-8")
        except UnicodeDecodeError:
            self._fail(CLOSE_INVALID_DATA, "binary message is not valid UTF-8")
            return None

    def _on_peer_close(self, event: CloseConnection) -> None:
        if self.close_code is None or self._conn.state is ConnectionState.REMOTE_CLOSING:
            self.close_code, self.close_reason = event.code, event.reason or ""
        if self._conn.state is ConnectionState.REMOTE_CLOSING:
            # Echo the peer's code; wsproto sends an empty close for 1005 (ws 3.3.3 style).
            self._send_close(event.code)
        self._read_done = True
        self._teardown()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): close frame, then drop TCP after a linger."""
        log.info("closing WebSocket from %s: %s %s", self.remote_addr or "?", code, reason)
        self.close_code, self.close_reason = code, reason
        self._failed = True
        self._read_done = True
        self._parts, self._size = [], 0
        self._send_close(code, reason)
        self._start_closer()

    # -- teardown -------------------------------------------------------------------

    def _start_closer(self) -> None:
        if self._closer is None and not self._torn_down.is_set():
            self._closer = gevent.spawn(self._close_connection)

    def _close_connection(self) -> None:
        """Wait for the close reply (reading it ourselves when nobody else reads), then drop TCP.

        Reading until the peer's close or EOF before closing avoids a TCP reset,
        which could destroy our close frame before the peer read it.
        """
        deadline = time.monotonic() + CLOSE_TIMEOUT
        try:
            if self._recv_lock.acquire(timeout=CLOSE_TIMEOUT):
                try:
                    self._linger(deadline)
                finally:
                    self._recv_lock.release()
        except Exception:  # never let a closer greenlet die noisily
            log.exception("error while closing WebSocket to %s", self.remote_addr or "?")
        finally:
            self._teardown()

    def _linger(self, deadline: float) -> None:
        while not self._torn_down.is_set():
            if not self._failed:
                for event in self._conn.events():
                    if isinstance(event, CloseConnection):
                        if self._conn.state in (ConnectionState.REMOTE_CLOSING, ConnectionState.CLOSED):
                            self._on_peer_close(event)
                        return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            data = b""
            with gevent.Timeout(remaining, False):
                data = self._read_some()
            if not data:
                return
            if not self._failed:
                self._feed(data)

    def _teardown(self) -> None:
        """Release the TCP connection (idempotent). Wakes a greenlet blocked reading it."""
        if self._torn_down.is_set():
            return
        self._torn_down.set()
        self._read_done = True
        if self.close_code is None:
            self.close_code = CLOSE_ABNORMAL
        try:
            self._sock.shutdown(_socket.SHUT_RDWR)
        except (OSError, ValueError):
            pass
        if self._owns_socket:
            try:
                self._sock.close()
            except (OSError, ValueError):
                pass

    def __repr__(self) -> str:
        return f"<WebSocket {self.remote_addr or '?'} {self._conn.state.name}>"


# -- client side ----------------------------------------------------------------------


def _wrap_client_ssl(sock: Any, ssl_context: Any, hostname: str) -> Any:
    """TLS over a gevent socket with gevent's SSLSocket, whatever kind of context we got.

    (``gevent.ssl.create_default_context()`` returns a stdlib context in an
    unpatched process; its own ``wrap_socket`` would block the whole process.)
    """
    ctx = ssl_context if ssl_context is not None else gssl.create_default_context()
    return gssl.SSLSocket(sock=sock, server_hostname=hostname, _context=ctx)


def _header_pairs(headers: Mapping[str, str] | Iterable[tuple[str, str]] | None) -> list[tuple[bytes, bytes]]:
    if not headers:
        return []
    items = headers.items() if isinstance(headers, Mapping) else headers
    out = []
    for name, value in items:
        name_b = name if isinstance(name, bytes) else str(name).encode("latin-1")
        value_b = value if isinstance(value, bytes) else str(value).encode("latin-1")
        out.append((name_b, value_b))
    return out


def _client_handshake(sock: Any, ws: WSConnection, url: str) -> Connection:
    status: int | None = None
    headers: list[tuple[bytes, bytes]] = []
    body = bytearray()
    while True:
        try:
            data = sock.recv(READ_SIZE)
        except TimeoutError:
            raise
        except OSError as exc:
            raise HandshakeError(f"WebSocket handshake with {url} failed: {exc}", status) from exc
        try:
            ws.receive_data(data or None)
        except (_WsRemoteError, _WsLocalError) as exc:
            raise HandshakeError(f"bad WebSocket handshake response from {url}: {exc}", status) from None
        # Only the handshake's events: frames that came with the 101 stay queued in the connection.
        for event in ws.handshake.events():
            if isinstance(event, AcceptConnection):
                assert ws.connection is not None
                return ws.connection
            if isinstance(event, RejectConnection):
                status, headers = event.status_code, list(event.headers)
                if not event.has_body:
                    raise HandshakeError(f"WebSocket upgrade to {url} rejected: HTTP {status}", status, headers)
            elif isinstance(event, RejectData):
                if len(body) < MAX_REJECT_BODY:
                    body += event.data[: MAX_REJECT_BODY - len(body)]
                if event.body_finished:
                    raise HandshakeError(
                        f"WebSocket upgrade to {url} rejected: HTTP {status}", status, headers, bytes(body)
                    )
        if not data:
            if status is not None:
                message = f"WebSocket upgrade to {url} rejected: HTTP {status}"
                raise HandshakeError(message, status, headers, bytes(body))
            raise HandshakeError(f"connection closed during WebSocket handshake with {url}")


def connect(
    url: str,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | None = None,
    timeout: float | None = None,
    max_message_size: int = MAX_MESSAGE_SIZE,
    ssl_context: Any = None,
) -> WebSocket:
    """Open a client WebSocket to ``url`` (``ws://``, ``wss://``; ``http(s)://`` mean the same).

    ``headers`` are extra request headers (e.g. ``Origin``). ``timeout`` bounds
    the TCP connect, the TLS handshake and the WebSocket handshake together;
    when it expires :class:`TimeoutError` is raised. A refused upgrade raises
    :class:`HandshakeError` (its ``status_code`` tells what the server said);
    network failures raise :class:`OSError`.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("ws", "http"):
        secure = False
    elif scheme in ("wss", "https"):
        secure = True
    else:
        raise ValueError(f"invalid scheme in WebSocket url {url!r}")
    host = parts.hostname
    if not host:
        raise ValueError(f"no host in WebSocket url {url!r}")
    port = parts.port or (443 if secure else 80)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    host_header = parts.netloc.rpartition("@")[2]
    sock = None
    try:
        with gevent.Timeout(timeout, TimeoutError(f"WebSocket connect to {url} timed out after {timeout} s")):
            sock = gsocket.create_connection((host, port))
            set_nodelay(sock)
            if secure:
                sock = _wrap_client_ssl(sock, ssl_context, host)
            ws = WSConnection(ConnectionType.CLIENT)
            request = Request(host=host_header, target=target, extra_headers=_header_pairs(headers))
            sock.sendall(ws.send(request))
            connection = _client_handshake(sock, ws, url)
    except BaseException:
        if sock is not None:
            sock.close()
        raise
    return WebSocket(
        sock,
        connection,
        owns_socket=True,
        max_message_size=max_message_size,
        remote_addr=f"{host}:{port}",
    )
