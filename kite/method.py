"""Methods: handler chains, result selection and throttling (PROTOCOL.md §6.1-6.2).

Execution order of a call: method pre-handlers, kite pre-handlers, the
handler, method post-handlers, kite post-handlers. The first error stops the
chain and becomes the reply. Which result is returned is the method's
*handling*: :data:`RETURN_METHOD`, :data:`RETURN_FIRST` or :data:`RETURN_LATEST`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from .errors import RequestLimitError

if TYPE_CHECKING:
    from .request import Request

#: Return the main handler's result (the default).
RETURN_METHOD = 0
#: Return the first non-``None`` result in execution order.
RETURN_FIRST = 1
#: Return the result of the last handler that ran.
RETURN_LATEST = 2

_HANDLINGS = (RETURN_METHOD, RETURN_FIRST, RETURN_LATEST)

#: The reply when a throttled method's bucket is empty (Go's exact text).
REQUEST_LIMIT_MESSAGE = "The maximum request rate is exceeded."


class Handler(Protocol):
    """Anything with ``serve_kite(request) -> result`` can serve a method."""

    def serve_kite(self, request: Request) -> Any: ...


class HandlerFunc:
    """Adapts a plain function ``fn(request) -> result`` to :class:`Handler`."""

    __slots__ = ("fn",)

    def __init__(self, fn: Callable[[Request], Any]):
        self.fn = fn

    def serve_kite(self, request: Request) -> Any:
        return self.fn(request)

    def __repr__(self) -> str:
        return f"HandlerFunc({getattr(self.fn, '__qualname__', self.fn)!r})"


def as_handler(handler: Handler | Callable[[Request], Any]) -> Handler:
    """Accept either a :class:`Handler` object or a plain function."""
    if hasattr(handler, "serve_kite"):
        return handler
    if callable(handler):
        return HandlerFunc(handler)
    raise TypeError(f"not a handler: {handler!r} (want serve_kite(request) or a function)")


class TokenBucket:
    """A token bucket: starts full with ``capacity`` tokens, gains one every ``fill_interval`` seconds."""

    __slots__ = ("fill_interval", "capacity", "_tokens", "_last", "_clock")

    def __init__(self, fill_interval: float, capacity: int, clock: Callable[[], float] = time.monotonic):
        if fill_interval <= 0 or capacity < 1:
            raise ValueError("throttle needs fill_interval > 0 and capacity >= 1")
        self.fill_interval = fill_interval
        self.capacity = capacity
        self._tokens = float(capacity)
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Take one token; ``False`` if the bucket is empty."""
        now = self._clock()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) / self.fill_interval)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class Method:
    """A registered method and its options; the chainable setters return ``self``."""

    def __init__(self, name: str, handler: Handler, auth_required: bool, handling: int = RETURN_METHOD):
        self.name = name
        self.handler = handler
        self.auth_required = auth_required
        self.method_handling = handling
        self.pre_handlers: list[Handler] = []
        self.post_handlers: list[Handler] = []
        self.bucket: TokenBucket | None = None
        self._chain: tuple[list[Handler], list[Handler]] | None = None

    def __repr__(self) -> str:
        return f"<Method {self.name} auth={self.auth_required}>"

    def disable_authentication(self) -> Method:
        """Let anyone call this method without credentials."""
        self.auth_required = False
        return self

    def pre_handle(self, handler: Handler) -> Method:
        """Run ``handler`` before the method's handler."""
        self.pre_handlers.append(as_handler(handler))
        self._chain = None
        return self

    def pre_handle_func(self, fn: Callable[[Request], Any]) -> Method:
        """Run ``fn(request)`` before the method's handler."""
        return self.pre_handle(HandlerFunc(fn))

    def post_handle(self, handler: Handler) -> Method:
        """Run ``handler`` after the method's handler."""
        self.post_handlers.append(as_handler(handler))
        self._chain = None
        return self

    def post_handle_func(self, fn: Callable[[Request], Any]) -> Method:
        """Run ``fn(request)`` after the method's handler."""
        return self.post_handle(HandlerFunc(fn))

    def handling(self, mode: int) -> Method:
        """Choose which result the chain returns (``RETURN_METHOD``/``FIRST``/``LATEST``)."""
        if mode not in _HANDLINGS:
            raise ValueError(f"unknown method handling {mode!r}")
        self.method_handling = mode
        return self

    def throttle(self, fill_interval: float, capacity: int) -> Method:
        """Limit calls with a token bucket shared by all callers. Only the first call has effect."""
        if self.bucket is None:
            self.bucket = TokenBucket(fill_interval, capacity)
        return self

    def serve(self, request: Request, kite_pre: list[Handler], kite_post: list[Handler]) -> Any:
        """Throttle check, then run the whole chain and select the result.

        Kite-level handlers are fixed into the chain at the first call, as in Go.
        Raises whatever a handler raises (the caller turns it into a wire error).
        """
        if self._chain is None:
            self._chain = ([*self.pre_handlers, *kite_pre], [*self.post_handlers, *kite_post])
        if self.bucket is not None and not self.bucket.take():
            raise RequestLimitError(REQUEST_LIMIT_MESSAGE)
        pre, post = self._chain
        mode = self.method_handling
        if not pre and not post:
            return self.handler.serve_kite(request)
        first = latest = None
        for h in pre:
            latest = h.serve_kite(request)
            if first is None:
                first = latest
        result = latest = self.handler.serve_kite(request)
        if first is None:
            first = result
        for h in post:
            latest = h.serve_kite(request)
            if first is None:
                first = latest
        if mode == RETURN_FIRST:
            return first
        if mode == RETURN_LATEST:
            return latest
        return result
