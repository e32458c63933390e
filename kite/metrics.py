"""Prometheus metrics of a kite: off by default, a few attribute lookups per call when on.

``k.enable_metrics()`` (or ``Config.metrics = True``, ``KITE_METRICS=1``) needs the optional extra
``pip install kite[metrics]`` (``prometheus_client``) and serves ``GET /metrics`` through the
kite's Flask app. Until then ``k.metrics`` is :data:`DISABLED`: no ``prometheus_client`` import,
no metric object, no timing of calls, and ``/metrics`` is 404.

The metrics (README, "Operations") live in a :class:`CollectorRegistry` of the kite's own
(``k.metrics.registry``), so several kites in one process -- tests -- never collide. The hot
numbers (calls, latencies, message sizes) are plain Python integers on the call path, turned into
metric families only when scraped; gauges (connections, pending and queued calls) are counted at
scrape time from the live connections and cost nothing between scrapes.

Under gunicorn with several workers set ``PROMETHEUS_MULTIPROC_DIR`` to an empty directory
before the workers start, and call :func:`gunicorn_child_exit` from gunicorn's ``child_exit``
hook (``child_exit = kite.metrics.gunicorn_child_exit`` in ``gunicorn.conf.py``). Each worker then
writes its metrics to files there (prometheus_client's multiprocess mode): calls straight away,
the rest every :data:`SYNC_INTERVAL` seconds, and whichever worker answers ``/metrics`` adds up
all of them.
"""

from __future__ import annotations

import logging
import os
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import gevent

from .jsonlog import CALL_CONTEXT, CallContext

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

    from .client import Client
    from .connection import CallHandler, Connection
    from .errors import KiteError
    from .kite import Kite
    from .transport.session import Session

log = logging.getLogger("kite.metrics")

#: Where the metrics are served, on the kite's own port.
METRICS_PATH = "/metrics"
#: What to install when ``prometheus_client`` is missing.
INSTALL_HINT = "pip install kite[metrics]"
#: The variables that turn prometheus_client's multiprocess mode on (the second is its old name).
MULTIPROCESS_VARIABLES = ("PROMETHEUS_MULTIPROC_DIR", "prometheus_multiproc_dir")
#: Upper bounds of the call latency buckets, seconds: a call between two kites on one host takes
#: ~0.1 ms, one doing real work milliseconds to seconds (prometheus_client's default starts at 5 ms).
LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
#: Upper bounds of the buckets of slower operations (storage, HTTP endpoints), seconds.
OPERATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
#: The ``method`` label of calls to methods the kite does not serve: a peer calling made-up names
#: must not create a series per name.
UNKNOWN_METHOD = "(unknown)"
#: Seconds between two writes of a worker's gauges and byte counts to its files (multiprocess mode).
SYNC_INTERVAL = 1.0

#: The ``side`` label of a connection.
SERVED = "served"
DIALED = "dialed"
#: The ``transport`` label of a connection.
WEBSOCKET = "websocket"
RAW_WEBSOCKET = "raw_websocket"
XHR = "xhr"  # a served XHR session: polled or streamed, request by request
XHR_POLLING = "xhr_polling"
XHR_STREAMING = "xhr_streaming"

#: ``fn() -> [(label values, value), ...]``: a gauge read when scraped.
GaugeReader = Callable[[], Iterable[tuple[tuple[str, ...], float]]]


class MetricsNotInstalledError(ImportError):
    """``enable_metrics()`` without ``prometheus_client`` installed."""


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, or ``None`` when it is off."""
    for name in MULTIPROCESS_VARIABLES:
        value = os.environ.get(name)
        if value:
            return value
    return None


def gunicorn_child_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``child_exit`` hook: forget the gauges of a worker that exited (multiprocess mode).

    In ``gunicorn.conf.py``: ``from kite.metrics import gunicorn_child_exit as child_exit``.
    """
    if multiprocess_dir() is None:
        return
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)  # type: ignore[no-untyped-call]


class NoMetrics:
    """``k.metrics`` while metrics are off: every hook does nothing."""

    enabled = False

    def attach(self, client: Client, conn: Connection) -> None:
        """A new connection (:meth:`KiteMetrics.attach`): nothing to count."""

    def count_token_renewal(self, ok: bool) -> None:
        """A token renewal (:meth:`KiteMetrics.count_token_renewal`): nothing to count."""


#: The shared "metrics off" object.
DISABLED = NoMetrics()


class TrafficMeter:
    """Characters of dnode messages received and sent (bytes for the ASCII JSON kites exchange),
    added to by each :class:`~kite.connection.Connection` whose ``traffic`` this is."""

    __slots__ = ("received", "sent")

    def __init__(self) -> None:
        self.received = 0
        self.sent = 0


class MethodStats:
    """Calls of one method: count, latency buckets and errors by kite error type, as plain numbers."""

    __slots__ = ("method", "count", "sum", "buckets", "errors")

    def __init__(self, method: str):
        self.method = method
        self.count = 0
        self.sum = 0.0
        #: Calls per latency bucket (not cumulative); the last one is ``+Inf``.
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)
        self.errors: dict[str, int] = {}

    def observe(self, seconds: float, error: KiteError | None) -> None:
        """One call that took ``seconds`` and replied ``error`` (``None``: a result)."""
        self.count += 1
        self.sum += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        if error is not None:
            self.errors[error.type] = self.errors.get(error.type, 0) + 1


class SharedMethodStats:
    """:class:`MethodStats` for multiprocess mode: written through to prometheus_client's files."""

    __slots__ = ("method", "_calls", "_duration", "_errors")

    def __init__(self, method: str, calls: Counter, duration: Histogram, errors: Counter):
        self.method = method
        self._calls = calls.labels(method)
        self._duration = duration.labels(method)
        self._errors = errors

    def observe(self, seconds: float, error: KiteError | None) -> None:
        self._calls.inc()
        self._duration.observe(seconds)
        if error is not None:
            self._errors.labels(self.method, error.type).inc()


def transport_of(session: Session) -> str:
    """The ``transport`` label of a session (SockJS websocket, raw websocket, XHR)."""
    sockjs = getattr(session, "_sockjs", None)  # the websocket sessions, served and dialed
    if sockjs is not None:
        return WEBSOCKET if sockjs else RAW_WEBSOCKET
    streaming = getattr(session, "_streaming", None)  # a dialed XHR session
    if streaming is not None:
        return XHR_STREAMING if streaming else XHR_POLLING
    name = type(session).__name__
    return XHR if name.startswith("Xhr") else name


class _Gauge:
    """A gauge read at scrape time, and the label sets it has shown (they drop to 0, not vanish)."""

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...], read: GaugeReader,
                 multiprocess_mode: str):
        self.name = name
        self.documentation = documentation
        self.labelnames = labelnames
        self.read = read
        self.multiprocess_mode = multiprocess_mode
        self.seen: set[tuple[str, ...]] = set() if labelnames else {()}
        self.shared: Any = None  # the prometheus_client Gauge (multiprocess mode)

    def values(self) -> dict[tuple[str, ...], float]:
        current = dict.fromkeys(self.seen, 0.0)
        for labels, value in self.read():
            current[labels] = current.get(labels, 0.0) + value
        self.seen.update(current)
        return current


#: prometheus_client metric objects of this process by name (multiprocess mode): every kite of a
#: process adds to the same ones, as two objects on one file key would overwrite each other.
_shared_metrics: dict[str, Any] = {}


class KiteMetrics:
    """``k.metrics`` once :meth:`kite.Kite.enable_metrics` ran: the kite's metrics and their hooks."""

    enabled = True

    def __init__(self, kite: Kite):
        try:
            import prometheus_client
        except ImportError:
            raise MetricsNotInstalledError(
                f"metrics need prometheus_client: {INSTALL_HINT} (or pip install prometheus_client)"
            ) from None
        self._prometheus = prometheus_client
        self.kite = kite
        #: prometheus_client's multiprocess mode (gunicorn with several workers) is on.
        self.multiprocess = multiprocess_dir() is not None
        #: This kite's registry (single-process mode; in multiprocess mode the files are the registry).
        self.registry: CollectorRegistry = prometheus_client.CollectorRegistry()
        self.traffic = TrafficMeter()
        self._methods: dict[str, MethodStats | SharedMethodStats] = {}
        self._connections: weakref.WeakKeyDictionary[Connection, tuple[str, str]] = weakref.WeakKeyDictionary()
        self._dialed_before: weakref.WeakSet[Client] = weakref.WeakSet()
        self._gauges: list[_Gauge] = []
        self.reconnects = self.counter("kite_reconnects", "Successful redials of dialed clients after a disconnect")
        self.token_renewals = self.counter("kite_token_renewals", "Token renewals by outcome (ok, error)",
                                           ("result",))
        for result in ("ok", "error"):
            self.token_renewals.labels(result)  # shown as 0 from the start
        self.add_gauge("kite_connections", "Open connections by side (served, dialed) and transport",
                       ("side", "transport"), self._count_connections)
        self.add_gauge("kite_pending_calls", "Outgoing calls waiting for their reply",
                       (), lambda: self._connection_stat("pending_calls"))
        self.add_gauge("kite_running_calls", "Incoming calls running now",
                       (), lambda: self._connection_stat("running_calls"))
        self.add_gauge("kite_queued_calls", "Incoming calls queued for a free worker",
                       (), lambda: self._connection_stat("queued_calls"))
        if self.multiprocess:
            self._shared_calls = self.counter("kite_calls", "Calls served, by method", ("method",))
            self._shared_errors = self.counter("kite_call_errors", "Calls answered with an error, by method and "
                                               "kite error type", ("method", "type"))
            self._shared_duration = self.histogram("kite_call_duration_seconds", "Time to serve a call, by method",
                                                   ("method",), LATENCY_BUCKETS)
            self._shared_received = self.counter("kite_received_bytes", "Characters of dnode messages received")
            self._shared_sent = self.counter("kite_sent_bytes", "Characters of dnode messages sent")
            self._synced_traffic = (0, 0)
            gevent.spawn(self._sync_loop)
        else:
            self.registry.register(_Collector(self))

    # -- making metrics ----------------------------------------------------------------

    def _make(self, kind: str, name: str, documentation: str, labelnames: tuple[str, ...], **options: Any) -> Any:
        cls = getattr(self._prometheus, kind)
        if not self.multiprocess:
            return cls(name, documentation, labelnames, registry=self.registry, **options)
        metric = _shared_metrics.get(name)
        if metric is None:
            metric = _shared_metrics[name] = cls(name, documentation, labelnames, registry=None, **options)
        return metric

    def counter(self, name: str, documentation: str, labelnames: tuple[str, ...] = ()) -> Counter:
        """A prometheus_client ``Counter`` in this kite's registry (``name`` without ``_total``)."""
        counter: Counter = self._make("Counter", name, documentation, labelnames)
        return counter

    def histogram(self, name: str, documentation: str, labelnames: tuple[str, ...] = (),
                  buckets: tuple[float, ...] = OPERATION_BUCKETS) -> Histogram:
        """A prometheus_client ``Histogram`` in this kite's registry."""
        histogram: Histogram = self._make("Histogram", name, documentation, labelnames, buckets=buckets)
        return histogram

    def add_gauge(self, name: str, documentation: str, labelnames: tuple[str, ...], read: GaugeReader,
                  multiprocess_mode: str = "livesum") -> None:
        """A gauge whose values ``read()`` gives at scrape time (``[(label values, value), ...]``).

        In multiprocess mode the values are written every :data:`SYNC_INTERVAL` seconds and
        combined over the workers by ``multiprocess_mode`` (prometheus_client's: ``livesum``, ``max``…).
        """
        gauge = _Gauge(name, documentation, labelnames, read, multiprocess_mode)
        if self.multiprocess:
            gauge.shared = self._make("Gauge", name, documentation, labelnames, multiprocess_mode=multiprocess_mode)
        self._gauges.append(gauge)

    # -- hooks of the runtime ------------------------------------------------------------

    def method_stats(self, method: str) -> MethodStats | SharedMethodStats:
        """The statistics of ``method`` (:data:`UNKNOWN_METHOD` for a name the kite does not serve)."""
        stats = self._methods.get(method)
        if stats is not None:
            return stats
        known = method in self.kite._methods
        label = method if known else UNKNOWN_METHOD
        stats = self._methods.get(label)
        if stats is None:
            if self.multiprocess:
                stats = SharedMethodStats(label, self._shared_calls, self._shared_duration, self._shared_errors)
            else:
                stats = MethodStats(label)
            self._methods[label] = stats
        return stats

    def attach(self, client: Client, conn: Connection) -> None:
        """A new connection of ``client`` (from ``Client._new_connection``): count it, its messages and,
        when a dialed client connects again, a reconnect."""
        conn.traffic = self.traffic
        dialed = client.dialed
        self._connections[conn] = (DIALED if dialed else SERVED, transport_of(conn.session))
        if dialed:
            if client in self._dialed_before:
                self.reconnects.inc()
            else:
                self._dialed_before.add(client)

    def count_token_renewal(self, ok: bool) -> None:
        """A token renewal that worked (``ok``) or failed."""
        self.token_renewals.labels("ok" if ok else "error").inc()

    # -- reading -------------------------------------------------------------------------

    def _live_connections(self) -> Iterator[tuple[Connection, tuple[str, str]]]:
        for conn, labels in list(self._connections.items()):
            if not conn.closed:
                yield conn, labels

    def _count_connections(self) -> Iterator[tuple[tuple[str, ...], float]]:
        for _conn, labels in self._live_connections():
            yield labels, 1.0

    def _connection_stat(self, key: str) -> Iterator[tuple[tuple[str, ...], float]]:
        yield (), float(sum(conn.stats()[key] for conn, _labels in self._live_connections()))

    def sync(self) -> None:
        """Write this process's gauges and byte counts to its multiprocess files (no-op otherwise)."""
        if not self.multiprocess:
            return
        received, sent = self.traffic.received, self.traffic.sent
        last_received, last_sent = self._synced_traffic
        self._synced_traffic = (received, sent)
        if received > last_received:
            self._shared_received.inc(received - last_received)
        if sent > last_sent:
            self._shared_sent.inc(sent - last_sent)
        for gauge in self._gauges:
            for labels, value in gauge.values().items():
                (gauge.shared.labels(*labels) if labels else gauge.shared).set(value)

    def _sync_loop(self) -> None:
        closed = self.kite.server_close_notify()
        while not closed.wait(SYNC_INTERVAL):
            try:
                self.sync()
            except Exception:
                log.exception("writing the metrics of this process failed")

    def exposition(self) -> tuple[bytes, str]:
        """The text exposition of every metric, and its content type (all workers in multiprocess mode)."""
        prometheus = self._prometheus
        if not self.multiprocess:
            return prometheus.generate_latest(self.registry), prometheus.CONTENT_TYPE_LATEST
        from prometheus_client import multiprocess

        self.sync()
        registry = prometheus.CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return prometheus.generate_latest(registry), prometheus.CONTENT_TYPE_LATEST


class _Collector:
    """The single-process metrics made at scrape time from :class:`KiteMetrics`' plain numbers."""

    def __init__(self, metrics: KiteMetrics):
        self._metrics = weakref.proxy(metrics)  # the registry must not keep a closed kite alive

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        m = self._metrics
        calls = CounterMetricFamily("kite_calls", "Calls served, by method", labels=["method"])
        errors = CounterMetricFamily("kite_call_errors", "Calls answered with an error, by method and kite error "
                                     "type", labels=["method", "type"])
        duration = HistogramMetricFamily("kite_call_duration_seconds", "Time to serve a call, by method",
                                         labels=["method"])
        for stats in list(m._methods.values()):
            assert isinstance(stats, MethodStats)
            calls.add_metric([stats.method], stats.count)
            for error_type, count in list(stats.errors.items()):
                errors.add_metric([stats.method, error_type], count)
            cumulative, buckets = 0, []
            for bound, count in zip((*LATENCY_BUCKETS, float("inf")), stats.buckets, strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            duration.add_metric([stats.method], buckets, stats.sum)
        yield calls
        yield errors
        yield duration
        received = CounterMetricFamily("kite_received_bytes", "Characters of dnode messages received")
        received.add_metric([], m.traffic.received)
        sent = CounterMetricFamily("kite_sent_bytes", "Characters of dnode messages sent")
        sent.add_metric([], m.traffic.sent)
        yield received
        yield sent
        for gauge in m._gauges:
            family = GaugeMetricFamily(gauge.name, gauge.documentation, labels=list(gauge.labelnames))
            for labels, value in sorted(gauge.values().items()):
                family.add_metric(list(labels), value)
            yield family


def _bound_text(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


# -- the kite side: enabling, serving, timing calls --------------------------------------------


def enable(kite: Kite) -> KiteMetrics:
    """Turn ``kite``'s metrics on (idempotent) and serve them at :data:`METRICS_PATH`."""
    if isinstance(kite.metrics, KiteMetrics):
        return kite.metrics
    metrics = KiteMetrics(kite)
    kite.metrics = metrics
    kite.app.add_url_rule(METRICS_PATH, endpoint="kite_metrics", view_func=_metrics_view(metrics))
    return metrics


def _metrics_view(metrics: KiteMetrics) -> Callable[[], Any]:
    def view() -> Any:
        from flask import Response

        body, content_type = metrics.exposition()
        return Response(body, content_type=content_type)

    return view


def _call_id(options: dict[str, Any]) -> int | None:
    """The dnode callback id of a call's ``responseCallback`` (named ``remote_callback_<id>``)."""
    name = getattr(options.get("responseCallback"), "__name__", "")
    digits = name.rpartition("_")[2]
    return int(digits) if digits.isdigit() else None


def _caller(client: Client, options: dict[str, Any]) -> str:
    """The calling kite as its key path, from the call's ``kite`` field (or the connection's identity)."""
    from .wire.protocol import KiteIdentity

    if client.dialed or not isinstance(options.get("kite"), dict):
        return str(client.kite)
    try:
        return str(KiteIdentity.from_wire(options["kite"]))
    except (TypeError, ValueError):
        return str(client.kite)


def observed_call_handler(kite: Kite, client: Client) -> CallHandler:
    """The handler of ``client``'s incoming calls when metrics or JSON logs are on: the kite's own
    (``kite._handle_call``), timed into :class:`MethodStats`, and -- JSON logs -- run inside a
    :data:`~kite.jsonlog.CALL_CONTEXT`, with a DEBUG record per call on the kite's logger."""
    handle_call = kite._handle_call
    metrics = kite.metrics
    perf_counter = time.perf_counter
    if not kite._log_calls and isinstance(metrics, KiteMetrics):
        by_method = metrics._methods
        stats_for = metrics.method_stats

        def handle(conn: Connection, method_name: str, arguments: list[Any]) -> None:
            start = perf_counter()
            error = handle_call(client, method_name, arguments)
            elapsed = perf_counter() - start
            stats = by_method.get(method_name)
            (stats if stats is not None else stats_for(method_name)).observe(elapsed, error)

        return handle

    def handle_logged(conn: Connection, method_name: str, arguments: list[Any]) -> None:
        options = arguments[0] if arguments and isinstance(arguments[0], dict) else {}
        context = CallContext(kite.id, method_name, _caller(client, options), _call_id(options))
        token = CALL_CONTEXT.set(context)
        start = perf_counter()
        try:
            error = handle_call(client, method_name, arguments)
        finally:
            elapsed = perf_counter() - start
            CALL_CONTEXT.reset(token)
        if isinstance(kite.metrics, KiteMetrics):
            kite.metrics.method_stats(method_name).observe(elapsed, error)
        if kite.log.isEnabledFor(logging.DEBUG):
            kite.log.debug(
                "call %s from %s: %s in %.3f ms", method_name, context.caller,
                "ok" if error is None else error.type, elapsed * 1000,
                extra={**context._asdict(), "duration_ms": round(elapsed * 1000, 3),
                       "error": None if error is None else error.type},
            )

    return handle_logged
