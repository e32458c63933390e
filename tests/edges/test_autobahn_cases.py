"""The Autobahn test suite's cases that matter, against our real server and our real client.

Server: a kite on 127.0.0.1, both of its WebSocket endpoints -- raw ``/kite/websocket`` (kite.js'
``ws`` clients) and SockJS' ``/kite/{server}/{session}/websocket`` -- fed frames written by hand.
Client: :func:`kite.transport.wsclient.connect` against a small hostile server in the test. Each
case checks the close code we send (read with wsproto) and that another peer is then served at once.
"""

from __future__ import annotations

import json
import socket
import struct
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import gevent
import gevent.queue
import pytest
from gevent.server import StreamServer

from kite import Kite
from kite.client import Client
from kite.transport import wsclient
from kite.wire import wshandshake
from kite.wire.wsframes import OP_BINARY, OP_CLOSE, OP_CONTINUATION, OP_PING, OP_PONG, OP_TEXT, _apply_mask_python
from tests.serving import serve_kite

from .wsbytes import Event, WsprotoReader, build_frame

#: Largest message the kite under test accepts (small, so that "too big" is cheap to send).
LIMIT = 64 * 1024
#: Seconds a peer may take to answer here; far above what a loaded machine needs.
ANSWER_TIMEOUT = 5.0
#: Seconds within which another client must be served after a hostile connection.
PROMPT = 2.0
FIN = 0x80

#: Close codes a peer may send (RFC 6455 §7.4.1, the IANA registry, 3000-4999): echoed.
VALID_CODES = [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999]
#: Close codes no peer may send (0-999, 1004-1006, 1015, unassigned 1016-2999, over 4999): 1002.
INVALID_CODES = [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535]


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def fragments(opcode: int, payload: bytes, sizes: list[int]) -> list[tuple[int, bytes]]:
    """``(first byte, payload)`` of ``payload`` cut into fragments of ``sizes`` (the last takes the rest)."""
    pieces, pos = [], 0
    for size in sizes:
        pieces.append(payload[pos : pos + size])
        pos += size
    pieces.append(payload[pos:])
    return [((FIN if i == len(pieces) - 1 else 0) | (opcode if i == 0 else OP_CONTINUATION), p)
            for i, p in enumerate(pieces)]


@dataclass
class Case:
    """A hostile input: the frames to send (with a ``{}`` payload placeholder: a message the peer
    answers), and what must come back: a close code, or the answer (then a pong first if pinged)."""

    frames: Callable[[bytes], list[tuple[int, bytes]]]
    close: int | None = None  # the close code the peer must send; None: it must answer instead
    pong: bytes | None = None  # a pong the peer must send before the answer
    unmasked: bool = False  # send the frames with the wrong masking for the side
    method: str = "square"  # the method the answered message calls


CASES: dict[str, Case] = {
    # 5.x fragmentation
    "text-in-3-fragments": Case(lambda m: fragments(OP_TEXT, m, [10, 10])),
    "text-in-1-byte-fragments": Case(lambda m: fragments(OP_TEXT, m, [1] * (len(m) - 1))),
    "binary-in-fragments-with-empty-ones": Case(lambda m: fragments(OP_BINARY, m, [0, 5, 0, 7])),
    "ping-between-fragments": Case(
        lambda m: [(OP_TEXT, m[:5]), (FIN | OP_PING, b"are you there"), (OP_CONTINUATION, m[5:9]),
                   (FIN | OP_PONG, b"unsolicited"), (FIN | OP_CONTINUATION, m[9:])],
        pong=b"are you there",
    ),
    "continuation-without-start": Case(lambda m: [(FIN | OP_CONTINUATION, m)], close=1002),
    "fragmented-continuation-without-start": Case(lambda m: [(OP_CONTINUATION, m[:3]), (FIN | OP_TEXT, m)], close=1002),
    "new-text-inside-fragmented-message": Case(lambda m: [(OP_TEXT, m[:5]), (FIN | OP_TEXT, m)], close=1002),
    "new-binary-inside-fragmented-message": Case(lambda m: [(OP_BINARY, m[:5]), (OP_BINARY, m[5:])], close=1002),
    # 2.x / 5.x control frames
    "ping-with-125-bytes": Case(lambda m: [(FIN | OP_PING, b"p" * 125), (FIN | OP_TEXT, m)], pong=b"p" * 125),
    "ping-with-126-bytes": Case(lambda m: [(FIN | OP_PING, b"p" * 126)], close=1002),
    "close-with-126-bytes": Case(lambda m: [(FIN | OP_CLOSE, close_payload(1000, b"r" * 124))], close=1002),
    "fragmented-ping": Case(lambda m: [(OP_PING, b"a"), (FIN | OP_CONTINUATION, b"b")], close=1002),
    "fragmented-close": Case(lambda m: [(OP_CLOSE, close_payload(1000))], close=1002),
    # 3.x reserved bits, 4.x reserved opcodes
    **{f"rsv-{rsv:#x}": Case(lambda m, rsv=rsv: [(FIN | rsv | OP_TEXT, m)], close=1002)
       for rsv in (0x40, 0x20, 0x10, 0x70)},
    "rsv-on-ping": Case(lambda m: [(FIN | 0x40 | OP_PING, b"")], close=1002),
    **{f"opcode-{op:#x}": Case(lambda m, op=op: [(FIN | op, m)], close=1002) for op in (3, 7, 0xB, 0xF)},
    # 6.x UTF-8
    "invalid-utf8-text": Case(lambda m: [(FIN | OP_TEXT, b"caf\xc3(")], close=1007),
    "surrogate-in-text": Case(lambda m: [(FIN | OP_TEXT, b"\xed\xa0\x80")], close=1007),
    # The bad byte is in the second of three fragments and the third never comes: we fail right there.
    "invalid-utf8-fails-fast-in-fragments": Case(lambda m: [(OP_TEXT, b"ok "), (OP_CONTINUATION, b"\xff")], close=1007),
    "utf8-character-split-over-fragments": Case(  # é of "squaré" cut in two by a fragment border
        lambda m: fragments(OP_TEXT, m, [m.index(b"\xa9")]), method="squaré"
    ),
    "truncated-utf8-at-message-end": Case(
        lambda m: [(OP_TEXT, b"ab"), (FIN | OP_CONTINUATION, b"\xe2\x82")], close=1007
    ),
    # 7.x close
    "close-with-1-byte": Case(lambda m: [(FIN | OP_CLOSE, b"\x03")], close=1002),
    "close-reason-invalid-utf8": Case(
        lambda m: [(FIN | OP_CLOSE, close_payload(1000, b"\xce\xba\xe1\xbd"))], close=1007
    ),
    "close-empty": Case(lambda m: [(FIN | OP_CLOSE, b"")], close=1005),  # answered empty: read as 1005
    # (1014 is echoed too, but wsproto cannot read it: test_close_1014_is_echoed reads the bytes.)
    **{f"close-{code}": Case(lambda m, code=code: [(FIN | OP_CLOSE, close_payload(code, b"bye"))], close=code)
       for code in VALID_CODES if code != 1014},
    **{f"close-invalid-{code}": Case(lambda m, code=code: [(FIN | OP_CLOSE, close_payload(code))], close=1002)
       for code in INVALID_CODES},
    # 9.x sizes
    "frame-over-the-limit": Case(lambda m: [(FIN | OP_BINARY, b"x" * (LIMIT + 1))], close=1009),
    "message-over-the-limit-in-fragments": Case(
        lambda m: [(OP_TEXT, b"x" * (LIMIT // 2)), (OP_CONTINUATION, b"x" * (LIMIT // 2)),
                   (FIN | OP_CONTINUATION, b"x")],
        close=1009,
    ),
    "message-at-the-limit": Case(lambda m: [(FIN | OP_TEXT, m + b" " * (LIMIT - len(m)))]),
    # masking the wrong way for the side (unmasked client frame / masked server frame)
    "wrong-masking": Case(lambda m: [(FIN | OP_TEXT, m)], close=1002, unmasked=True),
}

#: Cases where the peer closes first (properly): we echo its close and drop TCP at once.
ECHOED = {name for name in CASES if name == "close-empty" or name.startswith("close-1") or name.startswith("close-3")
          or name.startswith("close-4")}


def frames_bytes(case: Case, message: bytes, masked: bool) -> bytes:
    """The bytes of ``case`` carrying ``message``; a frame over :data:`LIMIT` goes out as its header
    only (the refusal must come from the header alone)."""
    out = b""
    for b0, payload in case.frames(message):
        if len(payload) > LIMIT:
            out += build_frame(b0, b"", masked ^ case.unmasked, length=len(payload))
        else:
            out += build_frame(b0, payload, masked ^ case.unmasked)
    return out


class Peer:
    """One side of a raw WebSocket connection in the test: bytes out, wsproto-decoded events in."""

    def __init__(self, sock: socket.socket, masked_by_peer: bool, early: bytes = b""):
        self.sock = sock
        self.reader = WsprotoReader(masked=masked_by_peer)
        self.reader.feed(early)
        self.raw = bytearray(early)  # every byte received, for what wsproto cannot read
        self._seen = 0

    def next_event(self, timeout: float = ANSWER_TIMEOUT) -> Event | None:
        """The next event the other side sent; ``None`` at EOF (or when wsproto refused its bytes)."""
        deadline = time.monotonic() + timeout
        while self._seen >= len(self.reader.events):
            if self.reader.error is not None:
                return None
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                raise AssertionError("no answer in time") from None
            except OSError:
                data = b""
            if not data:
                return None
            self.raw += data
            self.reader.feed(data)
        self._seen += 1
        return self.reader.events[self._seen - 1]

    def close(self) -> None:
        self.sock.close()


# -- the server side: a kite ------------------------------------------------------------------------


def square_call(x: int, method: str = "square") -> str:
    """A dnode call of ``method(x)`` whose answer comes to callback 7 (non-ASCII written as UTF-8)."""
    return json.dumps({"method": method, "arguments": [{"withArgs": [x], "responseCallback": "[Function]"}],
                       "callbacks": {"7": [0, "responseCallback"]}}, ensure_ascii=False)


@pytest.fixture(scope="module")
def kite() -> Iterator[Kite]:
    k = Kite("hostile", "1.0.0")
    k.config.ip, k.config.port = "127.0.0.1", 0
    k.config.disable_authentication = True
    k.config.max_message_size = LIMIT
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("squaré", lambda r: r.args.one().must_float64() ** 2)
    serve_kite(k)
    yield k
    k.close()


@pytest.fixture(scope="module")
def bystander(kite: Kite) -> Iterator[Client]:
    """A well-behaved client, connected all along: it must be served promptly after every case."""
    c = Kite("bystander", "1.0.0").new_client(f"ws://127.0.0.1:{kite.port}/kite/websocket")
    c.dial_timeout(ANSWER_TIMEOUT)
    yield c
    c.close()


def assert_served_promptly(bystander: Client) -> None:
    start = time.monotonic()
    assert bystander.tell_with_timeout("square", ANSWER_TIMEOUT, 12) == 144
    assert time.monotonic() - start < PROMPT


def open_server_peer(kite: Kite, sockjs: bool) -> Peer:
    path = "/kite/000/edgecase/websocket" if sockjs else "/kite/websocket"
    sock = socket.create_connection(("127.0.0.1", kite.port), timeout=ANSWER_TIMEOUT)
    key = wshandshake.new_key()
    sock.sendall(wshandshake.build_request(f"127.0.0.1:{kite.port}", path, key))
    data = b""
    while (split := wshandshake.split_head(data, path)) is None:
        chunk = sock.recv(65536)
        assert chunk, "the server closed during the handshake"
        data += chunk
    head, rest = split
    status, headers = wshandshake.parse_head(head, path)
    assert status == 101
    wshandshake.check_accepted(headers, key, path)
    peer = Peer(sock, masked_by_peer=False, early=rest)
    if sockjs:
        assert peer.next_event() == ("text", "o")
    return peer


@pytest.mark.parametrize("sockjs", [False, True], ids=["raw", "sockjs"])
@pytest.mark.parametrize("name", list(CASES))
def test_server(kite: Kite, bystander: Client, name: str, sockjs: bool) -> None:
    case = CASES[name]
    call = square_call(5, case.method)
    message = (json.dumps([call], ensure_ascii=False) if sockjs else call).encode()
    peer = open_server_peer(kite, sockjs)
    try:
        peer.sock.sendall(frames_bytes(case, message, masked=True))
        if case.close is None:
            if case.pong is not None:
                assert peer.next_event() == ("pong", case.pong)
            reply = peer.next_event()
            assert reply is not None and reply[0] == "text", reply
            text = json.loads(reply[1][1:])[0] if sockjs else reply[1]
            assert json.loads(text)["arguments"][0] == {"error": None, "result": 25}
        else:
            event = peer.next_event()
            assert event is not None and event[:2] == ("close", case.close), event
            if name in ECHOED:
                assert peer.next_event() is None  # echoed, then TCP dropped at once
    finally:
        peer.close()
    assert_served_promptly(bystander)


@pytest.mark.parametrize("sockjs", [False, True], ids=["raw", "sockjs"])
def test_close_1014_is_echoed(kite: Kite, bystander: Client, sockjs: bool) -> None:
    peer = open_server_peer(kite, sockjs)
    try:
        peer.sock.sendall(build_frame(FIN | OP_CLOSE, close_payload(1014), masked=True))
        assert peer.sock.recv(64) == b"\x88\x02" + close_payload(1014)
    finally:
        peer.close()
    assert_served_promptly(bystander)


# -- the client side: wsclient against a hostile server ---------------------------------------------

#: The text message the hostile server's frames carry when a case is to be answered.
HOSTILE_MESSAGE = "hello from a hostile server, in pieces: é and 😀"


class HostileServer:
    """Accepts WebSocket upgrades properly, then sends each connection the bytes queued for it and
    records, per connection, what the client sent back (wsproto-decoded) until its close or EOF."""

    def __init__(self) -> None:
        self.scripts: gevent.queue.Queue[bytes] = gevent.queue.Queue()
        self.received: gevent.queue.Queue[list[Event]] = gevent.queue.Queue()
        self.raw: gevent.queue.Queue[bytes] = gevent.queue.Queue()  # the same, as bytes
        self.server = StreamServer(("127.0.0.1", 0), self._handle)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.server.server_port}/hostile"

    def _handle(self, sock: socket.socket, address: object) -> None:
        events: list[Event] = []
        peer: Peer | None = None
        try:
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = sock.recv(65536)
                if not chunk:
                    return
                data += chunk
            head, _, early = data.partition(b"\r\n\r\n")
            key = next(line.split(b":", 1)[1].strip() for line in head.split(b"\r\n")
                       if line.lower().startswith(b"sec-websocket-key:"))
            sock.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                         b"Sec-WebSocket-Accept: " + wshandshake.accept_value(key) + b"\r\n\r\n")
            sock.sendall(self.scripts.get(timeout=ANSWER_TIMEOUT))
            peer = Peer(sock, masked_by_peer=True, early=early)
            while (event := peer.next_event()) is not None:
                events.append(event)
                if event[0] == "close":
                    break
        except (OSError, AssertionError):
            pass
        finally:
            self.received.put(events)
            self.raw.put(bytes(peer.raw) if peer is not None else b"")
            sock.close()


@pytest.fixture(scope="module")
def hostile() -> Iterator[HostileServer]:
    server = HostileServer()
    server.server.start()
    yield server
    server.server.stop(timeout=1)


def assert_client_served_promptly(hostile: HostileServer) -> None:
    """Another connection of the same process, to a server behaving well this time, works at once."""
    start = time.monotonic()
    goodbye = build_frame(FIN | OP_CLOSE, close_payload(1000), False)
    hostile.scripts.put(build_frame(FIN | OP_TEXT, b"fine", False) + goodbye)
    ws = wsclient.connect(hostile.url, timeout=ANSWER_TIMEOUT)
    assert ws.recv_text() == "fine" and ws.recv_text() is None and ws.close_code == 1000
    assert hostile.received.get(timeout=ANSWER_TIMEOUT) == [("close", 1000, "")]
    hostile.raw.get(timeout=ANSWER_TIMEOUT)
    assert time.monotonic() - start < PROMPT


@pytest.mark.parametrize("name", list(CASES))
def test_client(hostile: HostileServer, name: str) -> None:
    case = CASES[name]
    message = HOSTILE_MESSAGE.replace("é", case.method[-1]).encode()  # "squaré": an é to cut in two
    hostile.scripts.put(frames_bytes(case, message, masked=False))
    ws = wsclient.connect(hostile.url, timeout=ANSWER_TIMEOUT, max_message_size=LIMIT)
    try:
        with gevent.Timeout(ANSWER_TIMEOUT):
            if case.close is None:
                received = ws.recv_text()
                assert received is not None
                assert received.rstrip(" ") == message.decode()
                ws.close(1000)
                ws.wait_closed()
            else:
                assert ws.recv_text() is None
                assert ws.close_code == case.close
    finally:
        ws.abort()
    sent = hostile.received.get(timeout=ANSWER_TIMEOUT)
    hostile.raw.get(timeout=ANSWER_TIMEOUT)
    expected = [("close", 1000 if case.close is None else case.close)]
    if case.pong is not None:
        expected.insert(0, ("pong", case.pong))
    assert [event[:2] for event in sent] == expected
    assert_client_served_promptly(hostile)


def test_client_echoes_1014(hostile: HostileServer) -> None:
    hostile.scripts.put(build_frame(FIN | OP_CLOSE, close_payload(1014), False))
    ws = wsclient.connect(hostile.url, timeout=ANSWER_TIMEOUT)
    assert ws.recv_text() is None and ws.close_code == 1014
    # wsproto refuses 1014 (see test_wsframes_vs_wsproto): the echo is checked as bytes.
    assert hostile.received.get(timeout=ANSWER_TIMEOUT) == []
    raw = hostile.raw.get(timeout=ANSWER_TIMEOUT)
    assert raw[:2] == b"\x88\x82" and _apply_mask_python(raw[6:8], raw[2:6]) == close_payload(1014)
    assert_client_served_promptly(hostile)
