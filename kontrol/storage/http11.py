"""One keep-alive HTTP/1.1 client connection, for the etcd clients' pool (:mod:`kontrol.storage.httppool`).

Why not ``http.client``: a request to etcd on a kept-alive ``http.client`` connection costs
~200 µs of CPU in a monkey-patched process, most of it building the request line by line and
parsing the answer's headers through the ``email`` package; this connection writes each
request in one ``send`` and reads the answer from one buffered reader kept for the life of
the connection: ~55-70 µs for the same request (measured side by side on one etcd). The
differential tests hold it to ``http.client``'s reading of the same bytes.

What it does: ``exchange`` sends one request (``Host``, ``Accept-Encoding: identity``,
``Content-Length`` for a body or a ``POST``/``PUT``/``PATCH``, the caller's headers) and reads
the whole answer: interim 1xx answers skipped; a body delimited by ``Transfer-Encoding:
chunked`` (chunk extensions and trailers read and dropped), by ``Content-Length``, or by the
server closing the connection; none after ``HEAD``, 1xx, 204 and 304. The connection stays
usable unless the answer said ``Connection: close``, was HTTP/1.0 without ``keep-alive`` or
ran to the close.

Failures are ``http.client``'s exception classes, so callers handle both alike: the server
closing the connection before any answer is ``http.client.RemoteDisconnected`` (a
``ConnectionResetError``: a stale kept-alive connection); a garbled status line
``BadStatusLine``; an over-long line or too many headers ``LineTooLong``/``HTTPException``; a
body cut short ``IncompleteRead``. Socket timeouts are ``TimeoutError``, and
:class:`BodyTimeout` once the status line and headers arrived but the body did not (a long
poll that saw nothing). After any failure the connection must be closed.
"""

from __future__ import annotations

import http.client
import io
import socket
import ssl
from collections.abc import Mapping, Sequence

#: Longest status or header line read, as ``http.client``'s ``_MAXLINE``.
MAX_LINE = 65536
#: Most header (or trailer) lines in one answer, as ``http.client``'s ``_MAXHEADERS``.
MAX_HEADERS = 100
#: Statuses that never carry a body (besides 1xx).
NO_BODY_STATUSES = frozenset({204, 304})
#: Methods whose requests carry ``Content-Length`` even without a body (as ``http.client`` sends them).
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTimeout(TimeoutError):
    """The server sent its status line and headers, then no body in time (a long poll that saw nothing)."""


class Headers:
    """An answer's headers: :meth:`get` by case-insensitive name gives the first value, as
    ``http.client.HTTPMessage.get`` does."""

    __slots__ = ("_first", "items")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        #: Every ``(name, value)`` in the order received.
        self.items = items
        self._first: dict[str, str] = {}
        for name, value in items:
            self._first.setdefault(name.lower(), value)

    def get(self, name: str, default: str | None = None) -> str | None:
        return self._first.get(name.lower(), default)

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._first

    def __repr__(self) -> str:
        return f"Headers({self.items!r})"


class Answer:
    """One answer read in full: status, headers, body, and whether the connection may be reused."""

    __slots__ = ("status", "reason", "headers", "body", "keep_alive")

    def __init__(self, status: int, reason: str, headers: Headers, body: bytes, keep_alive: bool) -> None:
        self.status, self.reason, self.headers, self.body, self.keep_alive = status, reason, headers, body, keep_alive


class Connection:
    """A keep-alive HTTP/1.1 connection to ``host:port`` (TLS with ``ssl_context``); ``timeout`` bounds
    connecting and each read unless :meth:`exchange` is given another read timeout."""

    def __init__(self, host: str, port: int, timeout: float, ssl_context: ssl.SSLContext | None = None) -> None:
        self.host, self.port, self.timeout = host, port, timeout
        self._tls = ssl_context
        self._host_header = host if port == (443 if ssl_context else 80) else f"{host}:{port}"
        if ":" in host and not host.startswith("["):  # an IPv6 literal
            self._host_header = f"[{host}]" if port == (443 if ssl_context else 80) else f"[{host}]:{port}"
        self.sock: socket.socket | None = None
        self._file: io.BufferedReader | None = None

    def connect(self) -> None:
        """Open the connection (``OSError`` when the server cannot be reached)."""
        sock = socket.create_connection((self.host, self.port), self.timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = sock
        self._file = sock.makefile("rb")

    def close(self) -> None:
        file, sock = self._file, self.sock
        self._file = self.sock = None
        if file is not None:
            file.close()
        if sock is not None:
            sock.close()

    def exchange(self, method: str, target: str, body: bytes | None = None,
                 headers: Mapping[str, str] | None = None, timeout: float | None = None) -> Answer:
        """Send ``method target`` (connecting first if needed) and read the whole answer;
        ``timeout``: the read timeout for this answer (the connection's otherwise)."""
        return self.exchange_all([(method, target, body, headers)], timeout)[0]

    def exchange_all(self, requests: Sequence[tuple[str, str, bytes | None, Mapping[str, str] | None]],
                     timeout: float | None = None) -> list[Answer]:
        """Send every ``(method, target, body, headers)`` at once (HTTP/1.1 pipelining: one write; the
        server answers in order) and read their answers. A failure after the first answer is an
        ``HTTPException`` (not a reset: some requests were served, none may be sent again)."""
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        self.sock.sendall(b"".join(self._request(*request) for request in requests))
        if timeout is not None:
            self.sock.settimeout(timeout)
        answers: list[Answer] = []
        try:
            for method, *_ in requests:
                if answers and not answers[-1].keep_alive:
                    raise http.client.HTTPException(
                        f"the server closed the connection after {len(answers)} of {len(requests)} pipelined answers")
                try:
                    answers.append(self._read_answer(method, timeout))
                except (OSError, http.client.HTTPException) as e:
                    if not answers:
                        raise
                    raise http.client.HTTPException(
                        f"pipelined answer {len(answers) + 1} of {len(requests)} failed: {e!r}") from e
            return answers
        finally:
            if timeout is not None and self.sock is not None:
                self.sock.settimeout(self.timeout)

    def _request(self, method: str, target: str, body: bytes | None, headers: Mapping[str, str] | None) -> bytes:
        head = [f"{method} {target} HTTP/1.1", f"Host: {self._host_header}", "Accept-Encoding: identity"]
        if headers:
            head += [f"{name}: {value}" for name, value in headers.items()]
        if body is not None or method in BODY_METHODS:
            head.append(f"Content-Length: {len(body or b'')}")
        return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + (body or b"")

    def _reading(self) -> io.BufferedReader:
        if self._file is None:
            raise http.client.HTTPException("the connection is closed")
        return self._file

    def _line(self) -> bytes:
        line = self._reading().readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise http.client.LineTooLong("header line")
        return line

    def _read_answer(self, method: str, timeout: float | None) -> Answer:
        while True:
            status, reason, version = self._status_line()
            headers = self._header_lines()
            if not 100 <= status < 200:
                break
            if status == 101:
                raise http.client.HTTPException("unexpected 101 Switching Protocols")
        keep_alive = self._keeps_alive(version, headers)
        try:
            if method == "HEAD" or status in NO_BODY_STATUSES:
                body = b""
            elif "chunked" in (headers.get("transfer-encoding") or "").lower():
                body = self._chunked_body()
            elif (length := headers.get("content-length")) is not None:
                body = self._exact(_content_length(length))
            else:
                body = self._reading().read()
                keep_alive = False
        except TimeoutError as e:
            raise BodyTimeout(f"no answer body in {timeout or self.timeout} s") from e
        return Answer(status, reason, headers, body, keep_alive)

    def _status_line(self) -> tuple[int, str, str]:
        line = self._line()
        if not line:
            raise http.client.RemoteDisconnected("Remote end closed connection without response")
        text = line.decode("iso-8859-1").rstrip("\r\n")
        version, _, rest = text.partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/") or len(code) != 3 or not code.isdigit():
            raise http.client.BadStatusLine(text)
        status = int(code)
        if status < 100:
            raise http.client.BadStatusLine(text)
        return status, reason.strip(), version

    def _header_lines(self) -> Headers:
        items: list[tuple[str, str]] = []
        while True:
            line = self._line()
            if line in (b"\r\n", b"\n", b""):
                return Headers(items)
            if len(items) >= MAX_HEADERS:
                raise http.client.HTTPException(f"got more than {MAX_HEADERS} headers")
            text = line.decode("iso-8859-1").rstrip("\r\n")
            if text[:1] in (" ", "\t") and items:  # an obsolete folded continuation
                name, value = items[-1]
                items[-1] = (name, f"{value} {text.strip()}")
                continue
            name, colon, value = text.partition(":")
            if colon:
                items.append((name.strip(), value.strip()))

    @staticmethod
    def _keeps_alive(version: str, headers: Headers) -> bool:
        tokens = {t.strip().lower() for t in (headers.get("connection") or "").split(",")}
        if "close" in tokens:
            return False
        return version != "HTTP/1.0" or "keep-alive" in tokens

    def _exact(self, size: int) -> bytes:
        data = self._reading().read(size)
        if len(data) < size:
            raise http.client.IncompleteRead(data, size - len(data))
        return data

    def _chunked_body(self) -> bytes:
        parts: list[bytes] = []
        while True:
            line = self._line()
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise http.client.IncompleteRead(b"".join(parts)) from None
            if size < 0:
                raise http.client.IncompleteRead(b"".join(parts))
            if size == 0:
                break
            parts.append(self._exact(size))
            if self._line() not in (b"\r\n", b"\n"):
                raise http.client.IncompleteRead(b"".join(parts))
        for _ in range(MAX_HEADERS + 1):  # trailers, dropped
            if self._line() in (b"\r\n", b"\n", b""):
                return b"".join(parts)
        raise http.client.HTTPException(f"got more than {MAX_HEADERS} trailer lines")


def _content_length(text: str) -> int:
    try:
        length = int(text)
    except ValueError:
        raise http.client.HTTPException(f"bad Content-Length {text!r}") from None
    if length < 0:
        raise http.client.HTTPException(f"bad Content-Length {text!r}")
    return length
