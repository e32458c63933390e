"""The dnode message layer, as pure code (no sockets, no greenlets, no clock).

A message is ``{"method": ..., "arguments": [...], "callbacks": {...}}``
(PROTOCOL.md §2). Functions inside ``arguments`` travel as the placeholder
``"[Function]"`` plus a *path* in ``callbacks``; the receiver puts a callable
proxy back at every path.

* :class:`Scrubber` -- the sending side: allocates callback ids (per
  connection, starting at 0, never reused) and keeps the local functions.
* :func:`encode_message` / :func:`decode_message` -- JSON text <-> :class:`Message`.
* :func:`unscrub` -- the receiving side: places proxies at callback paths.

We emit Go-style paths (integer array indices) and accept both Go's and
kite.js's (decimal-string indices); ``links`` is ignored.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NamedTuple, TypeAlias

from kite.errors import LocalProtocolError, RemoteProtocolError

from . import jsoncodec

#: What a function looks like on the wire.
FUNCTION_PLACEHOLDER = "[Function]"

if TYPE_CHECKING:
    Path: TypeAlias = list[int | str]
else:
    #: Where a callback sits inside ``arguments``: object keys and array indices (``list[int | str]``).
    Path = list

#: Go prints floats from 1e21 up in exponent form; below that, whole floats as integers.
_GO_EXPONENT_FROM = 1e21
#: Types that go on the wire as they are (exact types: bool is its own).
_PLAIN = frozenset((str, int, bool, type(None)))
#: Decimal digits a callback id or a path index may have: Go's ids are uint64 (20 digits), and
#: ``int()`` refuses strings over 4300 digits with a ValueError, so longer ones are refused first.
_MAX_INDEX_DIGITS = 20



class Message(NamedTuple):
    """A decoded dnode message.

    ``method`` is a method name (``str``) or a callback id (``int``);
    ``callbacks`` maps callback ids to their paths inside ``arguments``.
    """

    method: str | int
    arguments: list[Any]
    callbacks: dict[int, Path]


def _is_function(value: Any) -> bool:
    return callable(value) and not isinstance(value, type)


class Scrubber:
    """Turns outgoing values into wire values and remembers the functions in them.

    One scrubber belongs to one peer (it survives reconnects of a dialing
    client, like Go's). Callback ids count up from 0 and are never reused.
    """

    __slots__ = ("_next_id", "callbacks")

    def __init__(self) -> None:
        self._next_id = 0
        #: Local functions the peer may call, by callback id.
        self.callbacks: dict[int, Callable[..., Any]] = {}

    def allocate(self) -> int:
        """A fresh callback id with no function stored (for ids tracked elsewhere)."""
        cb_id = self._next_id
        self._next_id = cb_id + 1
        return cb_id

    def register(self, fn: Callable[..., Any]) -> int:
        """Store ``fn`` under a fresh callback id and return the id."""
        cb_id = self.allocate()
        self.callbacks[cb_id] = fn
        return cb_id

    def remove(self, cb_id: int) -> None:
        """Forget a callback (e.g. a response callback that has fired)."""
        self.callbacks.pop(cb_id, None)

    def get(self, cb_id: int) -> Callable[..., Any] | None:
        """The local function for ``cb_id``, or ``None`` if unknown."""
        return self.callbacks.get(cb_id)

    def scrub(self, value: Any, path: Path, callbacks: dict[str, Path]) -> Any:
        """Return ``value`` with every function replaced by the placeholder.

        Each function found is registered and its path (``path`` + the route
        inside ``value``) is added to ``callbacks`` under the decimal id. Whole
        floats become integers, as Go writes them. Containers with nothing to
        change are returned as they are (not copied).
        """
        kind = type(value)
        if kind in _PLAIN:
            return value
        if kind is float:
            return _wire_float(value)
        if isinstance(value, dict):
            out: dict[Any, Any] | None = None
            for key, item in value.items():
                if type(item) in _PLAIN:
                    continue  # the common case: no call, no path built
                new = self.scrub(item, [*path, key], callbacks)
                if new is not item:
                    if out is None:
                        out = dict(value)
                    out[key] = new
            return value if out is None else out
        if isinstance(value, (list, tuple)):
            out_list: list[Any] | None = None
            for index, item in enumerate(value):
                if type(item) in _PLAIN:
                    continue
                new = self.scrub(item, [*path, index], callbacks)
                if new is not item:
                    if out_list is None:
                        out_list = list(value)
                    out_list[index] = new
            if out_list is not None:
                return out_list
            return value if isinstance(value, list) else list(value)
        if isinstance(value, (str, int)):  # subclasses (enums, ...): as they are
            return value
        if _is_function(value):
            callbacks[str(self.register(value))] = path
            return FUNCTION_PLACEHOLDER
        return value


def _wire_float(value: float) -> float | int:
    # Go encodes a whole float64 without a fraction (49, not 49.0), and Go peers
    # cannot decode 49.0 into an int: write whole floats as integers.
    if value.is_integer() and -_GO_EXPONENT_FROM < value < _GO_EXPONENT_FROM:
        return int(value)
    if not math.isfinite(value):
        raise LocalProtocolError(f"cannot send {value} as JSON")
    return value


def encode_message(method: str | int, arguments: list[Any], callbacks: dict[str, Path]) -> str:
    """Encode one dnode message as compact JSON, keys in Go's order.

    Raises :class:`LocalProtocolError` if a value cannot be encoded as JSON.
    """
    try:
        return jsoncodec.dumps({"method": method, "arguments": arguments, "callbacks": callbacks})
    except (TypeError, ValueError) as exc:
        raise LocalProtocolError(f"cannot encode dnode message: {exc}") from None


def decode_message(text: str | bytes) -> Message:
    """Parse one dnode message. Anything malformed raises :class:`RemoteProtocolError`."""
    try:
        obj = jsoncodec.loads(text)
    except jsoncodec.DECODE_ERRORS as exc:
        raise RemoteProtocolError(f"message is not valid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise RemoteProtocolError("message is not a JSON object")

    method: Any = obj.get("method")
    kind = type(method)
    if kind is not str:
        if kind is float and method.is_integer():
            method = int(method)
        elif kind is not int:
            raise RemoteProtocolError("method is not string or integer")
        if method < 0:
            raise RemoteProtocolError("callback id is negative")

    arguments = obj.get("arguments")
    if type(arguments) is not list:
        if arguments is not None:
            raise RemoteProtocolError("arguments is not an array")
        arguments = []

    raw_callbacks = obj.get("callbacks")
    callbacks: dict[int, Path] = {}
    if raw_callbacks:
        if type(raw_callbacks) is not dict:
            raise RemoteProtocolError("callbacks is not an object")
        for key, path in raw_callbacks.items():
            # reprlib in the messages: bounded depth and length, so a deeply nested path cannot blow the stack
            if type(path) is not list:
                raise RemoteProtocolError(f"callback path is not an array of keys: {reprlib.repr(path)}")
            for step in path:
                if type(step) is not str and type(step) is not int:
                    raise RemoteProtocolError(f"callback path is not an array of keys: {reprlib.repr(path)}")
            if not (key.isdigit() and key.isascii() and len(key) <= _MAX_INDEX_DIGITS):  # keys are strings
                raise RemoteProtocolError(f"callback id is not an unsigned integer: {key!r}")
            callbacks[int(key)] = path
    elif raw_callbacks is not None and type(raw_callbacks) is not dict:
        raise RemoteProtocolError("callbacks is not an object")
    return Message(method, arguments, callbacks)


def unscrub(arguments: list[Any], callbacks: dict[int, Path], make_proxy: Callable[[int], Any]) -> None:
    """Put ``make_proxy(id)`` at every callback path inside ``arguments`` (in place).

    Array indices may be integers or decimal strings. A path through a missing
    key, out of range, or into a scalar is skipped silently, as is an empty path.
    """
    for cb_id, path in callbacks.items():
        if not path:
            continue
        container: Any = arguments
        for step in path[:-1]:
            container = _step(container, step)
            if container is None:
                break
        else:
            _place(container, path[-1], make_proxy, cb_id)


def _index(container: list[Any], step: int | str) -> int | None:
    if isinstance(step, str):
        if not (step.isdigit() and step.isascii() and len(step) <= _MAX_INDEX_DIGITS):
            return None
        step = int(step)
    if 0 <= step < len(container):
        return step
    return None


def _step(container: Any, step: int | str) -> Any:
    if isinstance(container, list):
        index = _index(container, step)
        return None if index is None else container[index]
    if isinstance(container, dict):
        return container.get(step if isinstance(step, str) else str(step))
    return None


def _place(container: Any, step: int | str, make_proxy: Callable[[int], Any], cb_id: int) -> None:
    if isinstance(container, list):
        index = _index(container, step)
        if index is not None:
            container[index] = make_proxy(cb_id)
    elif isinstance(container, dict):
        key = step if isinstance(step, str) else str(step)
        if key in container:
            container[key] = make_proxy(cb_id)
