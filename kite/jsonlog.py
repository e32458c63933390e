"""JSON-lines logging for log shippers: one JSON object per record.

The plain format stays the default. ``Kite.set_log_format("json")``, ``Config.log_format = "json"``
or ``KITE_LOG_FORMAT=json`` switch every handler of the root logger to :class:`JsonFormatter`
(adding one on stderr when there is none), so every line a process logs is an object like::

    {"time": "2024-05-01T12:00:00.123456Z", "level": "INFO", "logger": "kite.math",
     "message": "...", "kite_id": "…", "method": "square", "caller": "/alice/…", "call_id": 7,
     "duration_ms": 0.21}

The call fields come from the record itself (``extra=`` on the logging call) or, for any record
logged while a kite serves a call, from the greenlet's :data:`CALL_CONTEXT` (set by
:mod:`kite.metrics` around each call when JSON logging is on): what a handler logs carries the
method, the caller and the call id without saying so. ``call_id`` is the dnode callback id of the
call's ``responseCallback``, the number the caller's own logs know the call by.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from contextvars import ContextVar
from typing import Any, NamedTuple

#: The log formats :func:`set_log_format` knows.
PLAIN = "plain"
JSON = "json"
LOG_FORMATS = (PLAIN, JSON)
#: The format plain handlers get back when JSON logging is switched off.
PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: The context fields a JSON line carries when the record has them, in this order.
CONTEXT_FIELDS = ("kite_id", "method", "caller", "call_id", "duration_ms", "error")


class CallContext(NamedTuple):
    """What a record logged while a call is served is stamped with."""

    kite_id: str
    method: str
    caller: str
    call_id: int | None


#: The call the current greenlet is serving (each greenlet has a context of its own), if any.
CALL_CONTEXT: ContextVar[CallContext | None] = ContextVar("kite_call_context", default=None)


def _stamp(record: logging.LogRecord, context: CallContext | None) -> None:
    if context is None:
        return
    for name, value in zip(CallContext._fields, context, strict=True):
        if not hasattr(record, name):
            setattr(record, name, value)


class CallContextFilter(logging.Filter):
    """Stamps records with the :data:`CALL_CONTEXT` of the greenlet logging them (on a handler it runs
    in that greenlet, so a formatter in another thread, a ``QueueListener``'s, still sees the fields)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record, CALL_CONTEXT.get())
        return True


class KiteIdFilter(logging.Filter):
    """On a kite's own logger (``kite.<name>``): stamps the records logged outside calls too with the
    kite's id -- when one kite alone logs there (same-named kites share the logger; then only the
    records of calls, stamped from their :data:`CALL_CONTEXT`, say which kite)."""

    def __init__(self) -> None:
        super().__init__()
        #: The ids of the kites logging through this logger.
        self.kite_ids: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        _stamp(record, CALL_CONTEXT.get())
        if not hasattr(record, "kite_id") and len(self.kite_ids) == 1:
            record.kite_id = next(iter(self.kite_ids))
        return True


def stamp_kite_id(logger: logging.Logger, kite_id: str) -> None:
    """Make ``logger``'s records carry ``kite_id`` (:class:`KiteIdFilter`)."""
    kite_filter = next((f for f in logger.filters if isinstance(f, KiteIdFilter)), None)
    if kite_filter is None:
        kite_filter = KiteIdFilter()
        logger.addFilter(kite_filter)
    kite_filter.kite_ids.add(kite_id)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: ``time`` (UTC, ISO 8601), ``level``, ``logger``, ``message``, the
    :data:`CONTEXT_FIELDS` the record has, and ``exception``/``stack`` text when it carries them."""

    def format(self, record: logging.LogRecord) -> str:
        _stamp(record, CALL_CONTEXT.get())
        seconds = int(record.created)
        line: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds)) + f".{int(record.msecs * 1000):06d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line, default=str, ensure_ascii=False)


def _has_filter(handler: logging.Handler, kind: type[logging.Filter]) -> bool:
    return any(isinstance(f, kind) for f in handler.filters)


def set_log_format(log_format: str) -> None:
    """Switch the process's log lines to ``"json"`` or back to ``"plain"``.

    ``json``: every handler of the root logger gets a :class:`JsonFormatter` and a
    :class:`CallContextFilter`; with no handler at all, one on stderr is added. ``plain``: handlers
    formatting JSON get :data:`PLAIN_FORMAT` back. Raises ``ValueError`` for another name.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"unknown log format {log_format!r}; use one of {', '.join(LOG_FORMATS)}")
    root = logging.getLogger()
    if log_format == JSON:
        if not root.handlers:
            root.addHandler(logging.StreamHandler(sys.stderr))
        for handler in root.handlers:
            handler.setFormatter(JsonFormatter())
            if not _has_filter(handler, CallContextFilter):
                handler.addFilter(CallContextFilter())
        return
    for handler in root.handlers:
        if isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(logging.Formatter(PLAIN_FORMAT))
        for f in [f for f in handler.filters if isinstance(f, CallContextFilter)]:
            handler.removeFilter(f)


def json_logging_on() -> bool:
    """True if a root handler formats JSON (:func:`set_log_format` ran with ``"json"``)."""
    return any(isinstance(h.formatter, JsonFormatter) for h in logging.getLogger().handlers)
