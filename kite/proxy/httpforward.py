"""The HTTP half of the reverse proxy: SockJS ``info``, ``xhr``, ``xhr_send``, ``xhr_streaming``,
``eventsource``... forwarded to a backend kite, always over plain ``http`` (§8.4).

:class:`HttpForwarder` is a small WSGI reverse proxy on ``requests`` (the proxy runs
monkey-patched, so it is cooperative):

* the request goes on with its method, query and body (at most ``max_body`` bytes, else
  413) and its headers minus the hop-by-hop ones, plus ``X-Forwarded-For``/``-Host``/``-Proto``;
* the response **streams**: each piece the backend sends (an ``xhr_streaming`` frame, an
  EventSource event) is handed to the caller as it arrives, and the next one is read only
  once the caller's socket took it (back-pressure: one piece of at most
  :data:`READ_CHUNK` bytes in the proxy per request);
* the backend is given :data:`CONNECT_TIMEOUT` to accept and ``read_timeout`` between two
  pieces; an unreachable backend is a 502, a silent one a 504 -- the caller never hangs.
  A backend dying mid-stream ends the response, and the caller's next request gets a 502.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests
    from _typeshed.wsgi import StartResponse

log = logging.getLogger("kite.proxy")

#: Seconds a backend gets to accept a connection: one on the proxy's network answers in
#: milliseconds, and 5 s stays well below a caller's own dial timeout (15 s), so the caller
#: gets our 502 rather than its timeout.
CONNECT_TIMEOUT = 5.0
#: Seconds between two pieces of a backend's response: above the longest SockJS heartbeat
#: (10 s for Go and Python kites, 25 s for sockjs-node), so only a stuck backend trips it.
READ_TIMEOUT = 35.0
#: Largest request body forwarded (an ``xhr_send`` payload), bytes: the kite's own
#: largest message (16 MiB), which the backend would refuse anyway.
MAX_BODY = 16 * 1024 * 1024
#: Bytes read from the backend at a time, at most.
READ_CHUNK = 64 * 1024
#: Pooled connections kept per backend: every open poll or stream holds one.
POOL_SIZE = 256
#: Headers that describe one hop, not the message (RFC 9110 §7.6.1), plus those we set.
HOP_BY_HOP = frozenset((
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade", "host", "content-length",
))


def request_headers(environ: dict[str, Any]) -> dict[str, str]:
    """The caller's headers to pass on, with the ``X-Forwarded-*`` ones added."""
    headers: dict[str, str] = {}
    for key, value in environ.items():
        if key.startswith("HTTP_"):
            headers[key[5:].replace("_", "-").title()] = value
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = environ["CONTENT_TYPE"]
    dropped = HOP_BY_HOP | {h.strip().lower() for h in environ.get("HTTP_CONNECTION", "").split(",")}
    headers = {k: v for k, v in headers.items() if k.lower() not in dropped}
    remote = environ.get("REMOTE_ADDR", "")
    forwarded_for = headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{forwarded_for}, {remote}" if forwarded_for else remote
    headers["X-Forwarded-Host"] = environ.get("HTTP_HOST", "")
    headers["X-Forwarded-Proto"] = environ.get("wsgi.url_scheme", "http")
    return headers


def response_headers(resp: requests.Response) -> list[tuple[str, str]]:
    """The backend's response headers minus the hop-by-hop ones (``Content-Length`` is kept:
    the body is passed on byte for byte)."""
    raw = resp.raw.headers
    dropped = (HOP_BY_HOP - {"content-length"}) | {h.strip().lower() for h in raw.get("Connection", "").split(",")}
    return [(k, v) for k, v in raw.items() if k.lower() not in dropped]


def error(start_response: StartResponse, status: str, text: str) -> list[bytes]:
    """A plain-text error response, as Go's ``http.Error``."""
    body = (text + "\n").encode()
    start_response(status, [("Content-Type", "text/plain; charset=utf-8"), ("X-Content-Type-Options", "nosniff"),
                            ("Content-Length", str(len(body)))])
    return [body]


class HttpForwarder:
    """Forwards plain HTTP requests to backends through one pooled ``requests`` session."""

    def __init__(self, connect_timeout: float = CONNECT_TIMEOUT, read_timeout: float = READ_TIMEOUT,
                 max_body: int = MAX_BODY, pool_size: int = POOL_SIZE):
        import requests
        from requests.adapters import HTTPAdapter

        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_body = max_body
        session = requests.Session()
        session.trust_env = False  # no *_PROXY variables or .netrc: the backend is dialed directly
        session.headers.clear()  # only the caller's headers go on (no User-Agent/Accept-Encoding of ours)
        adapter = HTTPAdapter(pool_connections=64, pool_maxsize=pool_size, max_retries=0)
        session.mount("http://", adapter)
        self._session = session
        self._requests = requests

    def close(self) -> None:
        """Close the pooled backend connections."""
        self._session.close()

    def forward(self, environ: dict[str, Any], start_response: StartResponse, url: str,
                what: str) -> Iterable[bytes]:
        """Send the request in ``environ`` to ``url`` and stream the answer back; ``what`` names
        the caller and the backend in logs."""
        method = environ.get("REQUEST_METHOD", "GET").upper()
        body = b""
        if method not in ("GET", "HEAD", "OPTIONS"):
            try:
                body = environ["wsgi.input"].read(self.max_body + 1)
            except (OSError, ValueError) as exc:
                log.info("%s: reading the request body failed: %s", what, exc)
                return error(start_response, "400 Bad Request", "Bad request body.")
            if len(body) > self.max_body:
                return error(start_response, "413 Request Entity Too Large", "Payload too large.")
        query = environ.get("QUERY_STRING", "")
        target = f"{url}?{query}" if query else url
        requests = self._requests
        try:
            resp = self._session.request(
                method, target, headers=request_headers(environ), data=body or None, stream=True,
                allow_redirects=False, timeout=(self.connect_timeout, self.read_timeout),
            )
        except requests.ReadTimeout as exc:
            log.warning("%s: %s %s timed out: %s", what, method, target, exc)
            return error(start_response, "504 Gateway Timeout", "The kite did not answer in time.")
        except requests.RequestException as exc:
            log.warning("%s: %s %s failed: %s", what, method, target, exc)
            return error(start_response, "502 Bad Gateway", "The kite cannot be reached.")
        log.debug("%s: %s %s -> %s", what, method, target, resp.status_code)
        start_response(f"{resp.status_code} {resp.reason}", response_headers(resp))
        return self._stream(resp, what)

    def _stream(self, resp: requests.Response, what: str) -> Iterator[bytes]:
        """The backend's body, piece by piece as it arrives; ends (logged) if the backend fails."""
        raw = resp.raw
        try:
            if raw.chunked and raw.supports_chunked_reads():
                yield from raw.read_chunked(READ_CHUNK, decode_content=False)
            else:
                while data := raw.read1(READ_CHUNK, decode_content=False):
                    yield data
        except Exception as exc:  # the backend died or went silent mid-response: end it here
            log.info("%s: the response broke off: %s", what, exc)
        finally:
            resp.close()
