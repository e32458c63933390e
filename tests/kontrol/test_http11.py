"""The etcd clients' HTTP/1.1 connection (kontrol.storage.http11), differentially against ``http.client``.

A scripted server on 127.0.0.1 answers each request with the next bytes of its script (split
into the given pieces, sent with pauses, so answers cross TCP segments). The same script is
read by our :class:`~kontrol.storage.http11.Connection` and by ``http.client``: the status,
the headers, the body and the exception class must agree, and the request each one sends
must mean the same to the server.
"""

from __future__ import annotations

import http.client
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import gevent
import pytest
from gevent.server import StreamServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from kontrol.storage.http11 import BodyTimeout, Connection

#: Headers compared between the two readings (by name, first value).
HEADERS = ("Content-Type", "X-Etcd-Index", "x-etcd-cluster-id", "Connection", "Content-Length", "X-Multi")


def read_request(reader: Any) -> bytes | None:
    """One request off ``reader`` (head and Content-Length body), None at EOF."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = reader.readline()
        if not line:
            return None
        head += line
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    return head + reader.read(length)


@contextmanager
def scripted(answers: Sequence[Sequence[bytes]], pause: float = 0.002) -> Iterator[tuple[int, list[bytes]]]:
    """A server answering the n-th request of a connection with ``answers[n]`` (its pieces sent
    one by one); closes the connection after the last. Yields its port and the requests it received."""
    received: list[bytes] = []

    def handle(sock: socket.socket, _: Any) -> None:
        reader = sock.makefile("rb")
        for pieces in answers:
            request = read_request(reader)
            if request is None:
                break
            received.append(request)
            for piece in pieces:
                sock.sendall(piece)
                gevent.sleep(pause)
        sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        yield server.server_port, received
    finally:
        server.stop()


def ours(port: int, method: str = "GET", body: bytes | None = None, count: int = 1,
         timeout: float = 5.0) -> list[tuple[int, dict[str, str | None], bytes]]:
    conn = Connection("127.0.0.1", port, timeout)
    try:
        results = []
        for _ in range(count):
            a = conn.exchange(method, "/v2/keys/a", body, {"Content-Type": "application/json"})
            results.append((a.status, {h: a.headers.get(h) for h in HEADERS}, a.body))
            if not a.keep_alive:
                conn.close()
        return results
    finally:
        conn.close()


def stdlib(port: int, method: str = "GET", body: bytes | None = None, count: int = 1,
           timeout: float = 5.0) -> list[tuple[int, dict[str, str | None], bytes]]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        results = []
        for _ in range(count):
            conn.request(method, "/v2/keys/a", body=body, headers={"Content-Type": "application/json"})
            r = conn.getresponse()
            data = r.read()
            results.append((r.status, {h: r.msg.get(h) for h in HEADERS}, data))
        return results
    finally:
        conn.close()


def both(answers: Sequence[Sequence[bytes]], **kwargs: Any) -> tuple[Any, Any]:
    """What each client reads of the same script (an exception's class where it raised)."""
    readings = []
    for client in (ours, stdlib):
        with scripted(answers) as (port, _):
            try:
                readings.append(client(port, **kwargs))
            except Exception as e:  # the class is what is compared
                readings.append(type(e))
    return readings[0], readings[1]


OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Index: 7\r\nContent-Length: 2\r\n\r\n{}"
CASES: dict[str, tuple[list[list[bytes]], dict[str, Any]]] = {
    "content-length": ([[OK]], {}),
    "content-length, byte by byte": ([[bytes([b]) for b in OK]], {}),
    "two answers kept alive": ([[OK], [OK.replace(b"7", b"8")]], {"count": 2}),
    "chunked with extensions and trailers": ([[
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-Etcd-Cluster-Id: abc\r\n\r\n",
        b"5;name=value\r\nhello\r\n", b"1\r\n \r\n", b"5\r\nworld\r\n", b"0\r\nX-Trailer: t\r\n\r\n"]], {}),
    "chunked wins over content-length": ([[
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"]], {}),
    "chunked, uppercase hex, two answers": ([[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                                              b"A\r\n0123456789\r\n0\r\n\r\n"], [OK]], {"count": 2}),
    "body to the close": ([[b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\n", b"all of ", b"it"]], {}),
    "HTTP/1.0 keep-alive": ([[b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1\r\n\r\nx"],
                             [OK]], {"count": 2}),
    "204 without a body": ([[b"HTTP/1.1 204 No Content\r\n\r\n"], [OK]], {"count": 2}),
    "HEAD": ([[b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"]], {"method": "HEAD"}),
    "100 Continue first": ([[b"HTTP/1.1 100 Continue\r\n\r\n", OK]], {}),
    "repeated and oddly cased headers": ([[b"HTTP/1.1 404 Not Found\r\nx-multi: one\r\nX-MULTI: two\r\n"
                                           b"content-length: 3\r\n\r\nnot"]], {}),
    "no reason phrase": ([[b"HTTP/1.1 503\r\nContent-Length: 0\r\n\r\n"]], {}),
    "Connection: close": ([[b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"]], {}),
    "a POST body": ([[OK]], {"method": "POST", "body": b'{"key": "a2V5"}'}),
    "a PUT without a body": ([[OK]], {"method": "PUT"}),
    # failures: the same exception class
    "closed before any answer": ([[]], {}),
    "garbage status line": ([[b"SSH-2.0-OpenSSH\r\n\r\n"]], {}),
    "body cut short": ([[b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"]], {}),
    "chunk cut short": ([[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort"]], {}),
    "bad chunk size": ([[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"]], {}),
    "header line too long": ([[b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n"]], {}),
    "too many headers": ([[b"HTTP/1.1 200 OK\r\n" + b"X-A: b\r\n" * 101 + b"Content-Length: 0\r\n\r\n"]], {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_reads_what_http_client_reads(name: str) -> None:
    answers, kwargs = CASES[name]
    mine, theirs = both(answers, **kwargs)
    assert mine == theirs


def test_folded_header_line() -> None:
    """An obsolete folded line joins its header with one space (RFC 9112 §5.2; ``http.client`` keeps the raw
    CRLF and indent in the value -- the one deliberate difference)."""
    answer = b"HTTP/1.1 200 OK\r\nX-Multi: first\r\n  continued\r\nContent-Length: 0\r\n\r\n"
    with scripted([[answer]]) as (port, _):
        (status, headers, body), = ours(port)
    assert (status, headers["X-Multi"], body) == (200, "first continued", b"")


def test_failures_are_http_client_classes() -> None:
    """The pool retries a stale connection on ConnectionResetError: the close before any answer must be one."""
    with scripted([[]]) as (port, _), pytest.raises(http.client.RemoteDisconnected) as info:
        ours(port)
    assert isinstance(info.value, ConnectionResetError)


def requests_sent(client: Callable[..., Any], **kwargs: Any) -> bytes:
    with scripted([[OK]]) as (port, received):
        client(port, **kwargs)
    return received[0]


def parsed(request: bytes) -> tuple[bytes, dict[bytes, bytes], bytes]:
    """Request line, headers by lowercase name (the Host's port left out: each run has a server of its
    own), body."""
    head, _, body = request.partition(b"\r\n\r\n")
    line, *lines = head.split(b"\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (x.partition(b":") for x in lines)}
    headers[b"host"] = headers[b"host"].rsplit(b":", 1)[0]
    return line, headers, body


@pytest.mark.parametrize("method, body", [("GET", None), ("POST", b'{"a": 1}'), ("PUT", None), ("DELETE", None),
                                          ("PUT", b"value=x&ttl=90")])
def test_sends_what_http_client_sends(method: str, body: bytes | None) -> None:
    mine = parsed(requests_sent(ours, method=method, body=body))
    theirs = parsed(requests_sent(stdlib, method=method, body=body))
    assert mine == theirs


def test_read_timeouts() -> None:
    """No status line in time: TimeoutError; headers but no body in time: BodyTimeout (a long poll)."""
    head_only = [[b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"]]

    def silent_after(pieces: list[list[bytes]], seconds: float) -> Callable[[socket.socket, Any], None]:
        def handle(sock: socket.socket, _: Any) -> None:
            read_request(sock.makefile("rb"))
            for piece in pieces[0]:
                sock.sendall(piece)
            gevent.sleep(seconds)
            sock.close()
        return handle

    for pieces, expected in (([[]], TimeoutError), (head_only, BodyTimeout)):
        server = StreamServer(("127.0.0.1", 0), silent_after(pieces, 2.0))
        server.start()
        try:
            conn = Connection("127.0.0.1", server.server_port, 5.0)
            with pytest.raises(expected) as info:
                conn.exchange("GET", "/v2/keys/a?wait=true", timeout=0.3)
            assert expected is BodyTimeout or not isinstance(info.value, BodyTimeout)
            conn.close()
        finally:
            server.stop()


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=3000), chunk=st.integers(1, 700), split=st.integers(1, 400),
       chunked=st.booleans())
def test_any_body_any_segmenting(body: bytes, chunk: int, split: int, chunked: bool) -> None:
    """Random bodies, chunk sizes and TCP segmenting: both read the same answer."""
    if chunked:
        parts = [body[i:i + chunk] for i in range(0, len(body), chunk)]
        payload = b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"
        answer = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + payload
    else:
        answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body)
    pieces = [answer[i:i + split] for i in range(0, len(answer), split)]
    mine, theirs = both([pieces, [OK]], count=2)
    assert mine == theirs
    assert mine[0][2] == body


# -- pipelining (no http.client counterpart: it does not pipeline) ------------------------------------

PIPELINED = [("PUT", "/v2/keys/id", b"value=1", None), ("PUT", "/v2/keys/path", b"value=2", None)]


def test_pipelined_requests_go_in_one_write_and_are_answered_in_order() -> None:
    second = OK.replace(b"X-Etcd-Index: 7", b"X-Etcd-Index: 8")
    with scripted([[OK], [second]]) as (port, received):
        conn = Connection("127.0.0.1", port, 5.0)
        try:
            answers = conn.exchange_all(PIPELINED)
        finally:
            conn.close()
    assert [a.headers.get("X-Etcd-Index") for a in answers] == ["7", "8"]
    assert [r.split(b" ", 2)[1] for r in received] == [b"/v2/keys/id", b"/v2/keys/path"]
    assert received[0].endswith(b"value=1") and received[1].endswith(b"value=2")


@pytest.mark.parametrize("first", [OK, b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 2\r\n\r\nok"])
def test_a_failure_after_the_first_pipelined_answer_is_not_a_stale_connection(first: bytes) -> None:
    """Some requests were served: the failure must not look like a connection closed while idle (which
    the pool retries on a new one, sending every request again)."""
    with scripted([[first]]) as (port, _):  # closes after the first answer
        conn = Connection("127.0.0.1", port, 5.0)
        try:
            with pytest.raises(http.client.HTTPException) as failure:
                conn.exchange_all(PIPELINED)
        finally:
            conn.close()
    assert not isinstance(failure.value, (ConnectionError, http.client.RemoteDisconnected))
    assert "of 2" in str(failure.value)


def test_the_pool_resends_a_pipelined_batch_only_when_nothing_was_answered() -> None:
    """A kept-alive connection the server closed while idle: the batch goes again on a new one."""
    from kontrol.storage.httppool import HttpPool, Request

    connections = []

    def handle(sock: socket.socket, _: Any) -> None:
        connections.append(sock)
        reader = sock.makefile("rb")
        for _ in range(1 if len(connections) == 1 else 2):  # the first connection: one answer, then closed
            if read_request(reader) is None:
                break
            sock.sendall(OK)
        sock.close()

    server = StreamServer(("127.0.0.1", 0), handle)
    server.start()
    try:
        pool = HttpPool("127.0.0.1", server.server_port, timeout=5.0, pool_size=1)
        assert pool.request("GET", "/v2/keys/a").status == 200  # kept alive; the server then closes it
        gevent.sleep(0.1)
        replies = pool.request_all([Request(m, t, b) for m, t, b, _ in PIPELINED])
        assert [r.status for r in replies] == [200, 200] and len(connections) == 2
        pool.close()
    finally:
        server.stop()
