"""Registering with Kontrol over plain HTTP, and the heartbeats that keep it (PROTOCOL.md §7.7).

A kite that cannot keep a websocket to Kontrol registers with ``POST
<kontrol>/register`` and then proves it is alive with ``GET
<kontrol>/heartbeat?id=<kite id>`` every ``heartbeatInterval`` seconds. Kontrol
answers ``pong``, or ``registeragain`` once it has forgotten the kite (it
restarted, or no heartbeat came for 30 s); the kite then stops heartbeating and
registers again (:meth:`kite.Kite.register_http_forever`).

The heartbeat greenlet is the kite's one heartbeat ticker (``kite._heartbeat``,
§6.4), the same slot the built-in ``kite.heartbeat`` method uses: when Kontrol
later drives ``kite.heartbeat`` over a websocket, that replaces (stops) the HTTP
heartbeat, and a new HTTP registration replaces a websocket ticker, as in Go.
Closing the kite stops it.

HTTP goes through ``requests``, which blocks the whole process unless it is
monkey-patched (``gevent.monkey.patch_all()``): use the HTTP registration in a
patched process only, like a gunicorn gevent worker or a ``patch_all()`` script.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

if TYPE_CHECKING:
    from kite.kite import Kite

log = logging.getLogger("kite.heartbeat")

#: The Kontrol URL suffix dropped before appending an HTTP endpoint (§7.7).
KITE_SUFFIX = "/kite"
#: Kontrol's HTTP endpoints, siblings of its ``/kite`` (§7.7).
REGISTER_PATH = "register"
HEARTBEAT_PATH = "heartbeat"
#: Heartbeat answers: alive, or "I forgot you, register again".
PONG = "pong"
REGISTER_AGAIN = "registeragain"
#: Bytes of a heartbeat answer read at most (the 2018 Go kite reads 16): the
#: answers are tiny, and a misbehaving server cannot make us buffer megabytes.
MAX_HEARTBEAT_BODY = 16


def kontrol_path(kontrol_url: str, path: str) -> str:
    """Kontrol's HTTP endpoint ``path``: its URL without a trailing ``/kite``, plus ``/path``.

    ``http://kontrol:4000/kite`` gives ``http://kontrol:4000/register``.
    """
    base = kontrol_url[: -len(KITE_SUFFIX)] if kontrol_url.endswith(KITE_SUFFIX) else kontrol_url
    return f"{base}/{path}"


def post_register(url: str, body: dict[str, Any], timeout: float | None) -> tuple[int, str]:
    """``POST`` the registration ``body`` as JSON; returns ``(status, text)``.

    Raises ``requests.RequestException`` when there is no HTTP answer.
    """
    import requests

    response = requests.post(url, json=body, timeout=timeout)
    return response.status_code, response.text


def get_heartbeat(url: str, kite_id: str, timeout: float | None) -> tuple[int, str]:
    """One ``GET url?id=<kite_id>``; returns ``(status, stripped text of at most 16 bytes)``."""
    import requests

    response = requests.get(url, params={"id": kite_id}, timeout=timeout, stream=True)
    try:
        head = next(response.iter_content(MAX_HEARTBEAT_BODY), b"")[:MAX_HEARTBEAT_BODY]
    finally:
        response.close()
    return response.status_code, head.decode("utf-8", "replace").strip()


class HTTPHeartbeat:
    """Sends ``GET /heartbeat?id=<kite id>`` every ``interval`` seconds until stopped.

    On ``registeragain`` it stops and calls ``on_register_again()`` (which should
    start a new registration in another greenlet). Failed or malformed
    heartbeats are logged and the ticker goes on, as in Go.
    """

    def __init__(
        self,
        kite: Kite,
        url: str,
        interval: float,
        on_register_again: Callable[[], Any],
        timeout: float | None = None,
    ):
        if interval <= 0:
            raise ValueError(f"heartbeat interval must be positive, got {interval!r}")
        self.kite = kite
        #: The heartbeat endpoint (without the ``id`` query).
        self.url = url
        self.interval = interval
        self.timeout = timeout
        self.on_register_again = on_register_again
        #: Heartbeats answered with ``pong`` so far.
        self.pongs = 0
        self._greenlet: gevent.Greenlet[[], None] | None = None

    def __repr__(self) -> str:
        return f"<HTTPHeartbeat {self.url} every {self.interval:g}s running={self.running}>"

    @property
    def running(self) -> bool:
        """True while the ticker runs (not stopped, replaced or told to register again)."""
        return self._greenlet is not None and not self._greenlet.dead

    def start(self) -> None:
        """Start ticking; replaces the kite's current heartbeat ticker (HTTP or websocket)."""
        if self.running:
            return
        greenlet = gevent.spawn(self._run)
        previous = self.kite._heartbeat
        if previous is not None and not previous.dead:
            previous.kill(block=False)
        self.kite._heartbeat = greenlet
        self._greenlet = greenlet

    def stop(self) -> None:
        """Stop ticking (idempotent)."""
        if self._greenlet is not None:
            self._greenlet.kill(block=False)

    def ping(self) -> str:
        """Send one heartbeat now; returns Kontrol's answer. Raises on transport errors
        and on a status other than 200."""
        status, answer = get_heartbeat(self.url, self.kite.id, self.timeout)
        if status != 200:
            raise RuntimeError(f"heartbeat to {self.url} answered HTTP {status}: {answer!r}")
        return answer

    def _run(self) -> None:
        log.debug("sending heartbeats to %s every %gs", self.url, self.interval)
        while True:
            gevent.sleep(self.interval)
            try:
                answer = self.ping()
            except Exception as exc:
                log.error("heartbeat to %s failed: %s", self.url, exc)
                continue
            if answer == PONG:
                self.pongs += 1
            elif answer == REGISTER_AGAIN:
                self.kite.log.info("Disconnected from Kontrol, going to register again")
                try:
                    self.on_register_again()
                except Exception:
                    log.exception("cannot start registering again")
                return
            else:
                log.error("malformed heartbeat response %r from %s", answer, self.url)
