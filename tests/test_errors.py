import builtins

import pytest

from kite import errors
from kite.errors import KiteError


@pytest.mark.parametrize(
    "type_, cls",
    [
        ("methodNotFound", errors.MethodNotFoundError),
        ("authenticationError", errors.AuthenticationError),
        ("requestLimitError", errors.RequestLimitError),
        ("argumentError", errors.ArgumentError),
        ("genericError", errors.GenericError),
        ("timeout", errors.TimeoutError),
        ("disconnect", errors.DisconnectError),
        ("sendError", errors.SendError),
        ("invalidResponse", errors.InvalidResponseError),
    ],
)
def test_from_wire_picks_the_subclass(type_, cls):
    e = errors.from_wire({"type": type_, "message": "m", "code": "c"})
    assert type(e) is cls and e.type == type_ and e.message == "m" and e.code == "c"
    assert e.to_wire() == {"type": type_, "message": "m", "code": "c"}


def test_timeout_is_also_the_builtin():
    assert issubclass(errors.TimeoutError, builtins.TimeoutError)
    assert issubclass(errors.TimeoutError, KiteError)


def test_kitejs_shapes_are_tolerated():
    e = errors.from_wire({"message": "boom"})
    assert isinstance(e, errors.GenericError) and e.message == "boom" and e.code == ""
    e = errors.from_wire({"message": "x", "name": "KiteError", "type": None, "code": None})
    assert e.type == "genericError" and e.code == ""
    assert errors.from_wire("hello").message == "hello"
    custom = errors.from_wire({"type": "myError", "message": "m", "code": "42", "id": "abc"})
    assert type(custom) is KiteError and custom.type == "myError" and custom.id == "abc"


def test_str_matches_go_printing():
    assert str(errors.GenericError("boom")) == "boom"
    assert str(errors.AuthenticationError("token: x")) == "authenticationError: token: x"


def test_handler_exceptions_become_generic_errors():
    assert errors.to_kite_error(ValueError("bad")) == errors.GenericError("bad")
    assert errors.to_kite_error(RuntimeError()).message == "RuntimeError"
    arg = errors.ArgumentError("x")
    assert errors.to_kite_error(arg) is arg
