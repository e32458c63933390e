"""Typed access to a call's arguments (Go's ``dnode.Partial``).

``Request.args`` is an :class:`Arguments`: a sequence of the raw ``withArgs``
values plus helpers -- ``one()``, ``slice_of_length(n)`` and typed ``must_*``
getters -- whose failures raise :class:`~kite.errors.ArgumentError`, which
reaches the caller as an ``argumentError``.
"""

from __future__ import annotations

import reprlib
from collections.abc import Callable, Iterator
from typing import Any

from .errors import ArgumentError

_TYPE_NAMES = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "number",
    float: "number",
    type(None): "null",
}


def _type_name(value: Any) -> str:
    if callable(value):
        return "function"
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _data_repr(value: Any) -> str:
    """``repr(value)`` for an error message; a received value nested too deeply for ``repr``
    (JSON decoders accept ~1000 levels) is shown by a bounded-depth repr instead."""
    try:
        return repr(value)
    except RecursionError:
        return reprlib.repr(value)


class Value:
    """One received JSON value, with typed getters.

    ``must_*`` getters raise :class:`ArgumentError` on a type mismatch; the
    plain ones (``float64()``, ``string()``, ...) do too, and exist so that code
    ported from Go reads the same.
    """

    __slots__ = ("raw",)

    def __init__(self, raw: Any):
        #: The decoded Python value (callbacks are callables).
        self.raw = raw

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.raw!r})"

    def _mismatch(self, wanted: str) -> ArgumentError:
        return ArgumentError(f"expected {wanted}, got {_type_name(self.raw)}. Data: {_data_repr(self.raw)}")

    def _array(self) -> list[Any]:
        if self.raw is None:
            raise ArgumentError("Cannot unmarshal nil argument")
        if not isinstance(self.raw, list):
            raise self._mismatch("array")
        return self.raw

    def one(self) -> Value:
        """The only element of an array of length one."""
        array = self._array()
        if len(array) != 1:
            raise ArgumentError("Invalid array length")
        return Value(array[0])

    def slice_of_length(self, n: int) -> list[Value]:
        """The elements of an array that must have exactly ``n`` of them."""
        array = self._array()
        if len(array) != n:
            raise ArgumentError("Invalid array length")
        return [Value(v) for v in array]

    def must_slice(self) -> list[Value]:
        """The elements of an array."""
        return [Value(v) for v in self._array()]

    def must_map(self) -> dict[str, Any]:
        """A JSON object, as a dict of raw values."""
        if not isinstance(self.raw, dict):
            raise self._mismatch("object")
        return self.raw

    def must_string(self) -> str:
        """A JSON string."""
        if not isinstance(self.raw, str):
            raise self._mismatch("string")
        return self.raw

    def must_float64(self) -> float:
        """A JSON number, as a float."""
        if isinstance(self.raw, bool) or not isinstance(self.raw, (int, float)):
            raise self._mismatch("number")
        try:
            return float(self.raw)
        except OverflowError:  # an integer beyond float64, which Go's decoder refuses too
            raise ArgumentError(f"number out of range: {_data_repr(self.raw)}") from None

    def must_int(self) -> int:
        """A JSON number with no fractional part, as an int."""
        number = self.must_float64()
        if not number.is_integer():
            raise self._mismatch("integer")
        return int(number)

    def must_bool(self) -> bool:
        """A JSON boolean."""
        if not isinstance(self.raw, bool):
            raise self._mismatch("boolean")
        return self.raw

    def must_function(self) -> Callable[..., Any]:
        """A function the caller passed (a dnode callback)."""
        if not callable(self.raw):
            raise self._mismatch("function")
        fn: Callable[..., Any] = self.raw
        return fn

    # Go's non-panicking names; in Python both raise.
    slice = must_slice
    map = must_map
    string = must_string
    float64 = must_float64
    bool = must_bool
    function = must_function


class Arguments(Value):
    """A call's ``withArgs``: indexing and iteration give the raw values."""

    __slots__ = ()

    def _items(self) -> list[Any]:
        raw = self.raw
        if raw is None:
            return []
        return raw if isinstance(raw, list) else [raw]

    def __getitem__(self, index: int) -> Any:
        try:
            return self._items()[index]
        except IndexError:
            raise ArgumentError(f"missing argument {index}") from None

    def __len__(self) -> int:
        return len(self._items())

    def __iter__(self) -> Iterator[Any]:
        return iter(self._items())

    def __bool__(self) -> bool:
        return bool(self._items())
