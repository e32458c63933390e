"""Kontrol's metrics and readiness, on top of its kite's (:mod:`kite.metrics`, :mod:`kite.health`).

Always (:func:`install`): ``/readyz`` also checks that the storage answers (``storage.ping()``).

With metrics on (``Kontrol.enable_metrics()``, ``Config.metrics``, ``KITE_METRICS=1``), next to the
kite's own -- whose ``kite_calls_total`` / ``kite_call_duration_seconds`` with ``method="register"``,
``"getKites"``, ``"getToken"`` are the rates and latencies of those calls:

* ``kontrol_registered_kites{backend,kind}``: live registrations this process keeps (kind
  ``websocket``, ``http``, ``self``), read from the registry at scrape time;
* ``kontrol_heartbeats_total{result}``: heartbeats (HTTP and ``kite.heartbeat`` pings), ``pong``
  or ``registeragain``;
* ``kontrol_http_request_duration_seconds{endpoint}``: ``POST /register`` and ``GET /heartbeat``;
* ``kontrol_storage_operation_duration_seconds{backend,operation}`` and
  ``kontrol_storage_operation_failures_total{backend,operation,error}``: every storage call;
* ``kontrol_refresh_lag_seconds``: how late the most overdue registry refresh is (0: none is);
* ``kontrol_watchers``: open ``getKites`` watches.
"""

from __future__ import annotations

import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from functools import wraps
from typing import TYPE_CHECKING, Any

from kite.metrics import KiteMetrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication

    from .kontrol import Kontrol
    from .storage import Storage

#: The storage methods timed (everything Kontrol calls; ``get`` of an id-only query also times its
#: ``get_by_id``, ``ping`` its ``count``).
STORAGE_OPERATIONS = (
    "upsert", "upsert_many", "refresh", "delete", "get", "get_by_id", "count", "watch", "ping",
    "add_key_pair", "get_key_pair", "get_key_pair_by_public", "delete_key_pair", "list_key_pairs",
)
#: Kontrol's HTTP endpoints that are timed (its plain WSGI routes).
HTTP_ENDPOINTS = ("/register", "/heartbeat")

#: The Kontrols whose metrics are on (each gets its metrics once).
_enabled: weakref.WeakSet[Kontrol] = weakref.WeakSet()


def backend_name(storage: Storage) -> str:
    """The ``backend`` label of a storage: its class name without ``Storage``, lower case (``sqlite``)."""
    return type(storage).__name__.removesuffix("Storage").lower() or "storage"


def install(kontrol: Kontrol) -> None:
    """Kontrol's readiness check, and its metrics if its kite's are on already (``Config.metrics``)."""
    storage = kontrol.storage
    kontrol.kite.health.add_check("storage", lambda: storage.ping())
    if kontrol.kite.metrics.enabled:
        enable(kontrol)


def enable(kontrol: Kontrol) -> KiteMetrics:
    """Turn on the kite's metrics and add Kontrol's (idempotent)."""
    metrics = kontrol.kite.enable_metrics()
    if kontrol in _enabled:
        return metrics
    _enabled.add(kontrol)
    backend = backend_name(kontrol.storage)
    registry = kontrol.registry
    metrics.add_gauge("kontrol_registered_kites", "Live registrations kept by this Kontrol process, by storage "
                      "backend and kind", ("backend", "kind"), lambda: _registered(kontrol, backend))
    metrics.add_gauge("kontrol_refresh_lag_seconds", "Seconds the most overdue registry refresh is late",
                      (), lambda: [((), _refresh_lag(kontrol))], multiprocess_mode="max")
    metrics.add_gauge("kontrol_watchers", "Open getKites watches", (),
                      lambda: [((), float(sum(len(w) for w in kontrol._watchers.values())))])
    heartbeats = metrics.counter("kontrol_heartbeats", "Heartbeats received, by answer (pong, registeragain)",
                                 ("result",))
    pong, register_again = heartbeats.labels("pong"), heartbeats.labels("registeragain")
    seen = registry.seen

    @wraps(seen)
    def counted_seen(kite_id: str) -> bool:
        known = seen(kite_id)
        (pong if known else register_again).inc()
        return known

    registry.seen = counted_seen  # type: ignore[method-assign]
    _time_storage(metrics, kontrol.storage, backend)
    _time_http(metrics, kontrol)
    return metrics


def _registered(kontrol: Kontrol, backend: str) -> Iterable[tuple[tuple[str, ...], float]]:
    kinds = Counter(entry.kind for entry in kontrol.registry.entries())
    return [((backend, kind), float(count)) for kind, count in kinds.items()]


def _refresh_lag(kontrol: Kontrol) -> float:
    now = time.monotonic()
    due = [entry.next_refresh for entry in kontrol.registry.entries() if entry.next_refresh != float("inf")]
    return max(0.0, now - min(due)) if due else 0.0


def _time_storage(metrics: KiteMetrics, storage: Storage, backend: str) -> None:
    """Replace the storage's methods on the instance by timed ones."""
    duration = metrics.histogram("kontrol_storage_operation_duration_seconds", "Storage calls, by backend and "
                                 "operation", ("backend", "operation"))
    failures = metrics.counter("kontrol_storage_operation_failures", "Storage calls that raised, by backend, "
                               "operation and error", ("backend", "operation", "error"))
    for operation in STORAGE_OPERATIONS:
        method = getattr(storage, operation, None)
        if method is not None:
            setattr(storage, operation, _timed(method, duration.labels(backend, operation),
                                               lambda error, op=operation: failures.labels(backend, op, error)))


def _timed(method: Callable[..., Any], histogram: Any, failure: Callable[[str], Any]) -> Callable[..., Any]:
    @wraps(method)
    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return method(*args, **kwargs)
        except Exception as exc:
            failure(type(exc).__name__).inc()
            raise
        finally:
            histogram.observe(time.perf_counter() - start)

    return timed


def _time_http(metrics: KiteMetrics, kontrol: Kontrol) -> None:
    """Wrap Kontrol's ``/register`` and ``/heartbeat`` WSGI routes in timers."""
    duration = metrics.histogram("kontrol_http_request_duration_seconds", "Kontrol's HTTP register and heartbeat "
                                 "requests", ("endpoint",))
    routes = kontrol.kite._wsgi_routes
    for path in HTTP_ENDPOINTS:
        app = routes.get(path)
        if app is not None:
            routes[path] = _timed_app(app, duration.labels(path))


def _timed_app(app: WSGIApplication, histogram: Any) -> WSGIApplication:
    def timed(environ: dict[str, Any], start_response: StartResponse) -> Iterator[bytes]:
        start = time.perf_counter()
        try:
            yield from app(environ, start_response)
        finally:
            histogram.observe(time.perf_counter() - start)

    return timed
