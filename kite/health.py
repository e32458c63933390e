"""``/healthz`` and ``/readyz`` of every kite, with JSON bodies (for load balancers and Kubernetes probes).

* ``GET /healthz``: 200 while the process serves (503 once the kite is closed)::

      {"status": "ok", "kite": {"name": "math", "version": "1.0.0", "id": "…"}, "uptime_seconds": 12.3}

* ``GET /readyz``: 200 when every readiness check passes, else 503; the body says which failed::

      {"status": "not ready", "kite": {…}, "checks": {"serving": {"ok": true},
       "kontrol": {"ok": false, "reason": "not registered with Kontrol yet"}}}

  The built-in checks: ``serving`` (the kite is not closed) and ``kontrol`` (once the kite has
  started registering -- ``register``, ``register_forever``, ``register_http``… -- it has been
  registered with Kontrol at least once; a kite that never registers passes it). Add your own with
  ``k.health.add_check(name, fn)``: ``fn()`` returns ``None`` when ready, or the reason why not, or
  raises; it gets :data:`CHECK_TIMEOUT` seconds. Kontrol adds ``storage`` (its storage answers).

Both are plain WSGI routes (``Kite.handle_wsgi``), ahead of Flask and its cost, and never need
``prometheus_client``. An application that serves either path itself (``k.handle_http("/healthz",
…)`` or a Flask route) keeps it: its route answers, not the built-in one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import gevent

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse

    from .kite import Kite

HEALTHZ_PATH = "/healthz"
READYZ_PATH = "/readyz"
#: Seconds one readiness check may take before it counts as failed: a probe must answer well
#: within the prober's own timeout (Kubernetes: 1 s by default, usually raised to a few).
CHECK_TIMEOUT = 2.0
#: ``fn() -> None | reason``: a readiness check.
ReadinessCheck = Callable[[], "str | None"]

_STATUS_LINES = {200: "200 OK", 405: "405 Method Not Allowed", 503: "503 Service Unavailable"}


class Health:
    """``k.health``: the kite's liveness and readiness, served at :data:`HEALTHZ_PATH` and :data:`READYZ_PATH`."""

    def __init__(self, kite: Kite):
        self.kite = kite
        self.started = time.monotonic()
        #: Set once the kite started registering with Kontrol: from then on ``kontrol`` needs a registration.
        self.expects_registration = False
        self._checks: dict[str, ReadinessCheck] = {"serving": self._serving, "kontrol": self._registered}
        kite.handle_wsgi(HEALTHZ_PATH, self._healthz_app)
        kite.handle_wsgi(READYZ_PATH, self._readyz_app)

    def add_check(self, name: str, check: ReadinessCheck) -> None:
        """Make readiness depend on ``check()`` too (a check of the same name is replaced)."""
        self._checks[name] = check

    def remove_check(self, name: str) -> None:
        """Stop checking ``name`` (unknown names are ignored)."""
        self._checks.pop(name, None)

    def expect_registration(self) -> None:
        """The kite registers with Kontrol: not ready until it has been registered once."""
        self.expects_registration = True

    # -- the checks --------------------------------------------------------------------

    def _serving(self) -> str | None:
        if self.kite.server_close_notify().is_set():
            return "the kite is closed"
        return "the kite is shutting down" if self.kite.drain.draining else None

    def _registered(self) -> str | None:
        if not self.expects_registration or self.kite.kontrol_ready_notify().is_set():
            return None
        return "not registered with Kontrol yet"

    def _identity(self) -> dict[str, str]:
        return {"name": self.kite.name, "version": self.kite.version, "id": self.kite.id}

    def liveness(self) -> tuple[int, dict[str, Any]]:
        """The ``/healthz`` status code and body."""
        closed = self.kite.server_close_notify().is_set()
        body = {"status": "closed" if closed else "ok", "kite": self._identity(),
                "uptime_seconds": round(time.monotonic() - self.started, 3)}
        return (503 if closed else 200), body

    def readiness(self) -> tuple[int, dict[str, Any]]:
        """The ``/readyz`` status code and body: every check run, each within :data:`CHECK_TIMEOUT`."""
        results: dict[str, dict[str, Any]] = {}
        for name, check in list(self._checks.items()):
            reason = _run_check(check)
            results[name] = {"ok": True} if reason is None else {"ok": False, "reason": reason}
        ready = all(r["ok"] for r in results.values())
        body = {"status": "ready" if ready else "not ready", "kite": self._identity(), "checks": results}
        return (200 if ready else 503), body

    # -- WSGI ------------------------------------------------------------------------------

    def _healthz_app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._app_serves(HEALTHZ_PATH):
            return self.kite.app(environ, start_response)
        return _answer(environ, start_response, self.liveness)

    def _readyz_app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if self._app_serves(READYZ_PATH):
            return self.kite.app(environ, start_response)
        return _answer(environ, start_response, self.readiness)

    def _app_serves(self, path: str) -> bool:
        """Whether the application has a route of its own at ``path`` (``k.handle_http``, a Flask
        route): then that one answers, not the built-in check."""
        return any(rule.rule == path for rule in self.kite.app.url_map.iter_rules())


def _run_check(check: ReadinessCheck) -> str | None:
    """``None`` if ``check`` passed, else why not (its reason, its error, or its timeout)."""
    try:
        with gevent.Timeout(CHECK_TIMEOUT):
            reason = check()
    except gevent.Timeout:
        return f"no answer within {CHECK_TIMEOUT:g} s"
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None if reason is None else str(reason)


def _answer(environ: dict[str, Any], start_response: StartResponse,
            status_and_body: Callable[[], tuple[int, dict[str, Any]]]) -> Iterable[bytes]:
    method = environ.get("REQUEST_METHOD", "GET")
    if method not in ("GET", "HEAD"):
        status, body = 405, {"status": "method not allowed"}
        extra = [("Allow", "GET, HEAD")]
    else:
        (status, body), extra = status_and_body(), []
    data = json.dumps(body).encode() + b"\n"
    start_response(_STATUS_LINES[status], [("Content-Type", "application/json"),
                                           ("Content-Length", str(len(data))), ("Cache-Control", "no-store"),
                                           *extra])
    return [] if method == "HEAD" else [data]
