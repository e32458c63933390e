"""RFC 6455 WebSocket connections on gevent sockets, both sides.

gevent-websocket does the server's HTTP upgrade handshake (its handler is the
``handler_class`` of our WSGI server and of the gunicorn worker), but its frame
code mangles close codes, accepts unmasked client frames and has no size cap.
So once the handshake is done, :meth:`WebSocket.from_environ` takes the
connection over and drives it with our own frame codec (:mod:`kite.wire.wsframes`,
pure code, several times faster per frame than wsproto's generic one). The dialing
side is :mod:`kite.transport.wsclient`.

Only gevent's own ``socket`` and ``ssl`` modules are used, so everything here is
cooperative in a process that never called ``monkey.patch_all()``.
"""

from __future__ import annotations

import fcntl
import logging
import socket as _socket
import struct
import termios
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import gevent
from gevent import socket as gsocket
from gevent.event import Event
from gevent.lock import Semaphore

from kite.wire import wsframes
from kite.wire.wsframes import (
    CLOSE_ABNORMAL,
    CLOSE_INVALID_DATA,
    CLOSE_NO_STATUS,
    CLOSE_NORMAL,
    CLOSE_PROTOCOL_ERROR,
    CLOSE_TOO_BIG,
    FrameDecoder,
    FrameError,
    FrameEvent,
    encode_close,
    encode_frame,
)

log = logging.getLogger("kite.websocket")

#: Largest message accepted, in bytes (16 MiB). Far above any real dnode message
#: (a getKites result listing thousands of kites is a few MiB), yet small enough
#: that one peer cannot make us buffer unbounded memory. Bigger → close 1009.
MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: Bytes asked for per socket read once data is flowing: a burst or a big message
#: comes in few syscalls.
READ_SIZE = 64 * 1024
#: Bytes asked for by a read that may park waiting for the peer. The buffer of a
#: waiting read stays allocated, so on 10k idle connections 64 KiB reads cost
#: ~53 KiB of RSS each; small ones keep idle connections cheap.
IDLE_READ_SIZE = 4 * 1024
#: Seconds we wait for the peer's close reply (or for a busy reader to see it)
#: before dropping the TCP connection. A live peer answers within one RTT.
CLOSE_TIMEOUT = 2.0
#: Watchdog ticks per dead-peer timeout (:meth:`WebSocket.watch_liveness`): after each silent
#: tick the peer is pinged (a live idle peer answers within the next tick); after this many
#: silent ticks in a row it is declared dead.
WATCHDOG_TICKS = 3
#: Event kind queued after the events a :class:`FrameError` carried: fail the connection there.
_FAIL = "fail"


__all__ = [
    "CLOSE_ABNORMAL",
    "CLOSE_INVALID_DATA",
    "CLOSE_NO_STATUS",
    "CLOSE_NORMAL",
    "CLOSE_PROTOCOL_ERROR",
    "CLOSE_TOO_BIG",
    "MAX_MESSAGE_SIZE",
    "WebSocket",
    "WebSocketClosed",
    "set_nodelay",
]


class WebSocketClosed(ConnectionError):
    """Raised when sending on a WebSocket whose closing has begun or whose socket broke."""


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

    Build one with :meth:`from_environ` (server) or
    :func:`kite.transport.wsclient.connect` (client).
    """

    def __init__(
        self,
        sock: Any,
        client: bool,
        *,
        reader: Any = None,
        owns_socket: bool = True,
        max_message_size: int = MAX_MESSAGE_SIZE,
        remote_addr: str = "",
        received: bytes = b"",
    ):
        self._sock = sock
        self._client = client
        self._read: Callable[[int], bytes] = reader if reader is not None else sock.recv
        self._buffered_reader = reader is not None  # a BufferedReader.read1 over ``sock``
        self._owns_socket = owns_socket
        self._decoder = FrameDecoder(masked=not client, max_message_size=max_message_size)
        #: ``"host:port"`` of the peer, for logs.
        self.remote_addr = remote_addr
        #: Close code/reason: the peer's (or ours when we closed first); 1006 when TCP just ended.
        self.close_code: int | None = None
        self.close_reason: str = ""
        self._send_lock = Semaphore()
        self._recv_lock = Semaphore()
        self._events: list[FrameEvent] = []  # decoded, not yet handled
        self._received = received  # bytes that came with the handshake
        self._read_size = IDLE_READ_SIZE  # grows while reads come back full
        self._close_sent = False
        self._close_received = False
        self._read_done = False  # no more messages will be returned
        self._failed = False  # we failed the connection; incoming bytes are garbage
        self._closer: gevent.Greenlet[[], None] | None = None
        self._torn_down = Event()
        self._reads = 0  # socket reads that brought data: what the watchdog looks at
        self._watchdog: Any = None
        #: Called (if set) before each socket read, once everything buffered has been handled:
        #: where a session writes what its reader queued in reply to the input just consumed.
        self.before_read: Callable[[], None] | None = None

    @property
    def max_message_size(self) -> int:
        """Largest message accepted from the peer, in bytes."""
        return self._decoder.max_message_size

    @max_message_size.setter
    def max_message_size(self, value: int) -> None:
        self._decoder.max_message_size = value

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
            client=False,
            reader=rfile.read1,
            owns_socket=False,
            max_message_size=max_message_size,
            remote_addr=f"{addr}:{port}" if port else addr,
        )

    # -- state ----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once closing has begun from either side (no more sends possible)."""
        return self._close_sent or self._close_received or self._torn_down.is_set()

    def wait_closed(self, timeout: float | None = CLOSE_TIMEOUT) -> bool:
        """Block until the TCP connection is released; True if it was within ``timeout``."""
        return self._torn_down.wait(timeout)

    # -- sending --------------------------------------------------------------------

    def send_text(self, text: str) -> None:
        """Send one text message. Raises :class:`WebSocketClosed` once closing has begun."""
        self._send(encode_frame(wsframes.OP_TEXT, text.encode("utf-8"), self._client))

    def send_texts(self, texts: Iterable[str]) -> None:
        """Send several text messages, one frame each, in a single socket write."""
        mask = self._client
        self._send(b"".join([encode_frame(wsframes.OP_TEXT, t.encode("utf-8"), mask) for t in texts]))

    def ping(self, payload: bytes = b"") -> None:
        """Send a ping (at most 125 bytes of payload); the peer's pong is ignored."""
        self._send(encode_frame(wsframes.OP_PING, payload[: wsframes.MAX_CONTROL_PAYLOAD], self._client))

    def text_frame(self, text: str) -> bytes:
        """The bytes of one text message as this side sends it (masked on the client)."""
        return encode_frame(wsframes.OP_TEXT, text.encode("utf-8"), self._client)

    def send_nowait(self, data: bytes) -> bytes | None:
        """Write what the socket takes right now, without waiting -- callable from the hub.

        Returns the unsent tail (``b""`` when everything went), or ``None`` when
        nothing could be tried: another send is under way, the socket is TLS or
        not a gevent socket, or the connection is closing. The caller must send the
        tail (with :meth:`send_frames`) before anything else.
        """
        raw = getattr(self._sock, "_sock", None)
        if raw is None or self.closed or self._send_lock.locked() or type(self._sock) is not gsocket.socket:
            return None
        try:
            sent = raw.send(data)
        except BlockingIOError:
            sent = 0
        except OSError:
            self._teardown()
            return None
        return data[sent:]

    def send_frames(self, data: bytes) -> None:
        """Send already-framed bytes (e.g. the tail :meth:`send_nowait` left), waiting as needed."""
        self._send(data)

    def _send(self, data: bytes) -> None:
        with self._send_lock:
            if self.closed:
                raise WebSocketClosed(f"WebSocket to {self.remote_addr or '?'} is closed")
            self._write(data)

    def _write(self, data: bytes) -> None:
        """Write bytes with the send lock held; a broken socket tears the connection down."""
        try:
            # One send() usually takes the whole frame; sendall() would first ask
            # the kernel for SO_SNDBUF (an extra syscall per frame in gevent).
            sent = self._sock.send(data)
            if sent < len(data):
                self._sock.sendall(memoryview(data)[sent:])
        except (OSError, ValueError) as exc:
            self._teardown()
            raise WebSocketClosed(f"WebSocket to {self.remote_addr or '?'} broke: {exc}") from exc

    def _send_close(self, code: int | None, reason: str = "") -> None:
        """Send our close frame once, if the connection still allows it; never raises."""
        with self._send_lock:
            if self._close_sent or self._torn_down.is_set():
                return
            self._close_sent = True
            try:
                self._write(encode_close(code, reason, self._client))
            except WebSocketClosed:
                pass

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the closing handshake (idempotent, does not block).

        Sends a close frame, then releases the TCP connection once the peer
        answers, or after :data:`CLOSE_TIMEOUT`.
        """
        if self._torn_down.is_set():
            return
        if not self.closed and self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._send_close(code, reason)
        self._start_closer()

    def abort(self) -> None:
        """Drop the TCP connection now, without (further) closing handshake."""
        self._teardown()

    # -- liveness -------------------------------------------------------------------

    def watch_liveness(self, timeout: float, on_silent: Callable[[], None]) -> None:
        """Drop the connection once nothing at all (no frame, no pong) has come from the peer for
        ``timeout`` seconds: a peer that stopped (SIGSTOP, a dead host, a cable pulled) sends no FIN.

        A hub timer ticks every ``timeout / WATCHDOG_TICKS``; after a silent tick ``on_silent()`` is
        called (in the hub: it must not block) for the owner to ping the peer from its writer. A
        ``timeout`` of 0 or less watches nothing. Teardown wakes a reader and a blocked writer.
        """
        if timeout <= 0 or self._watchdog is not None or self._torn_down.is_set():
            return
        tick = timeout / WATCHDOG_TICKS
        timer = gevent.get_hub().loop.timer(tick, tick)
        self._watchdog = timer
        reads_seen, silent_ticks = self._reads, 0

        def check() -> None:
            nonlocal reads_seen, silent_ticks
            if self._torn_down.is_set():
                timer.close()
                return
            if self._reads != reads_seen:
                reads_seen, silent_ticks = self._reads, 0
                return
            silent_ticks += 1
            if silent_ticks < WATCHDOG_TICKS:
                on_silent()
                return
            if self._unread_bytes() > 0:
                # The peer did speak: our reader is behind (a loaded process runs the timer before the
                # reader's wake-up). Not silent; look again in a tick.
                silent_ticks = WATCHDOG_TICKS - 1
                return
            log.info("WebSocket to %s: nothing received for %.1f s, dropping it", self.remote_addr or "?", timeout)
            if self.close_code is None:
                self.close_code, self.close_reason = CLOSE_ABNORMAL, f"peer silent for {timeout:g} s"
            self._teardown()
            timer.close()

        timer.start(check)

    def _unread_bytes(self) -> int:
        """Bytes the kernel holds for us that the reader has not taken yet (0 if unknown)."""
        try:
            pending = fcntl.ioctl(self._sock.fileno(), termios.FIONREAD, b"\0\0\0\0")
            return len(self._received) + int(struct.unpack("i", pending)[0])
        except (OSError, ValueError):
            return 0

    # -- receiving ------------------------------------------------------------------

    def recv_text(self) -> str | None:
        """Block for the next message; ``None`` once the connection is closed.

        Binary messages are decoded as UTF-8 (SockJS clients may send them);
        invalid UTF-8 closes the connection with 1007.
        """
        with self._recv_lock:
            while not self._read_done:
                events = self._events
                while events:
                    result = self._on_event(events.pop(0))
                    if result is not None or self._read_done:
                        return result
                data = self._received
                if not data:
                    if self.before_read is not None:
                        self.before_read()
                    data = self._read_some()
                self._received = b""
                if not data:
                    if self.close_code is None:
                        self.close_code = CLOSE_ABNORMAL
                    self._read_done = True
                    self._teardown()
                    break
                self._feed(data)
        return None

    def recv_texts(self) -> list[str] | None:
        """Block for the next message, and take every further one already received with it
        (no further socket read); ``None`` once the connection is closed.

        For relays: what one read brought in goes on with one :meth:`send_texts`.
        """
        first = self.recv_text()
        if first is None:
            return None
        texts = [first]
        with self._recv_lock:
            events = self._events
            while events and not self._read_done:
                text = self._on_event(events.pop(0))
                if text is not None:
                    texts.append(text)
        return texts

    def _read_some(self) -> bytes:
        size = self._read_size
        try:
            data = self._read(size)
        except (OSError, ValueError):  # reset, or the socket was torn down under us
            return b""
        if data:
            self._reads += 1
        # Full read: more is coming, ask for more next time; short: back to small parked reads.
        if len(data) == size:
            self._read_size = min(size * 4, READ_SIZE)
        else:
            self._read_size = IDLE_READ_SIZE
            if self._buffered_reader:
                # A short read1() leaves the handshake's buffered reader empty, and it only
                # refills when asked for less than its buffer: read the socket directly from now on.
                self._buffered_reader = False
                self._read = self._sock.recv
        return data

    def _feed(self, data: bytes) -> None:
        try:
            self._events.extend(self._decoder.receive(data))
        except FrameError as exc:
            # What the peer said before breaking the protocol is still handled, in order (so
            # the outcome does not depend on how TCP cut the bytes); then the connection fails.
            self._events.extend(exc.events)
            self._events.append((_FAIL, exc.code, exc.reason))

    def _on_event(self, event: FrameEvent) -> str | None:
        """Handle one frame event; a finished message is returned as text."""
        kind = event[0]
        if kind is wsframes.TEXT:
            text: str = event[1]
            return text
        if kind is wsframes.BINARY:
            data: bytes = event[1]
            try:
                return data.decode("utf-8")
            except UnicodeDecodeError:
                self._fail(CLOSE_INVALID_DATA, "binary message is not valid UTF-8")
                return None
        if kind is _FAIL:
            self._fail(event[1], event[2])
        elif kind is wsframes.PING:
            try:
                self._send(encode_frame(wsframes.OP_PONG, event[1], self._client))
            except WebSocketClosed:
                pass
        elif kind is wsframes.CLOSE:
            self._on_peer_close(event[1], event[2])
        return None  # pongs are ignored

    def _on_peer_close(self, code: int, reason: str) -> None:
        self._close_received = True
        if not self._close_sent:
            self.close_code, self.close_reason = code, reason
            # Echo the peer's code; an empty close is answered with an empty one (ws 3.3.3 style).
            self._send_close(code)
        elif self.close_code is None:
            self.close_code, self.close_reason = code, reason
        self._read_done = True
        self._teardown()

    def _fail(self, code: int, reason: str) -> None:
        """Fail the connection (RFC 6455 §7.1.7): close frame, then drop TCP after a linger."""
        log.info("closing WebSocket from %s: %s %s", self.remote_addr or "?", code, reason)
        self.close_code, self.close_reason = code, reason
        self._failed = True
        self._read_done = True
        self._events = []
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
                for event in self._events:
                    if event[0] is wsframes.CLOSE:
                        self._on_peer_close(event[1], event[2])
                        return
                    if event[0] is _FAIL:  # the peer broke the protocol: no close reply to wait for
                        return
                self._events = []
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            data = b""
            # gevent documents False as "time out silently"; the types-gevent stub leaves it out.
            with gevent.Timeout(remaining, False):  # type: ignore[arg-type]
                data = self._received or self._read_some()
                self._received = b""
            if not data:
                return
            if not self._failed:
                try:
                    self._events.extend(self._decoder.receive(data))
                except FrameError as exc:
                    self._events.extend(exc.events)  # a close before the violation still counts
                    self._events.append((_FAIL, exc.code, exc.reason))

    def _teardown(self) -> None:
        """Release the TCP connection (idempotent). Wakes a greenlet blocked reading it."""
        if self._torn_down.is_set():
            return
        self._torn_down.set()
        self._read_done = True
        if self._watchdog is not None:
            self._watchdog.close()
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
        state = "closed" if self.closed else "open"
        return f"<WebSocket {self.remote_addr or '?'} {state}>"
