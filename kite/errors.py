"""The kite error hierarchy.

Every error that crosses the wire is a :class:`KiteError` carrying the wire
``type``, ``message`` and ``code``. Each wire type has its own subclass so that
callers can ``except MethodNotFoundError:`` instead of comparing strings.
Protocol violations (bad frames, bad dnode messages) are :class:`ProtocolError`,
split into :class:`LocalProtocolError` (we misused the API) and
:class:`RemoteProtocolError` (the peer sent garbage).
"""

from __future__ import annotations

import builtins
from typing import Any

# Wire type strings (PROTOCOL.md §3.3).
METHOD_NOT_FOUND = "methodNotFound"
AUTHENTICATION_ERROR = "authenticationError"
REQUEST_LIMIT_ERROR = "requestLimitError"
ARGUMENT_ERROR = "argumentError"
GENERIC_ERROR = "genericError"
TIMEOUT = "timeout"
DISCONNECT = "disconnect"
SEND_ERROR = "sendError"
INVALID_RESPONSE = "invalidResponse"


class KiteError(Exception):
    """Root of all kite errors: a wire error object ``{type, message, code}``."""

    #: The wire ``type`` this class stands for; subclasses override it.
    wire_type: str = GENERIC_ERROR

    def __init__(self, message: str = "", type: str | None = None, code: str = "", id: str = ""):
        super().__init__(message)
        self.type = type if type is not None else self.wire_type
        self.message = message
        self.code = code or ""
        self.id = id or ""

    def to_wire(self) -> dict[str, Any]:
        """The error object as sent on the wire (Go's key order)."""
        return {"type": self.type, "message": self.message, "code": self.code}

    def __str__(self) -> str:
        if self.type in ("", GENERIC_ERROR):
            return self.message
        return f"{self.type}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(type={self.type!r}, message={self.message!r}, code={self.code!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, KiteError):
            return NotImplemented
        return (self.type, self.message, self.code) == (other.type, other.message, other.code)

    __hash__ = Exception.__hash__


class MethodNotFoundError(KiteError):
    """The callee has no method of that name."""

    wire_type = METHOD_NOT_FOUND


class AuthenticationError(KiteError):
    """The callee refused the call's credentials."""

    wire_type = AUTHENTICATION_ERROR


class RequestLimitError(KiteError):
    """The method's throttle bucket is empty."""

    wire_type = REQUEST_LIMIT_ERROR


class ArgumentError(KiteError):
    """The call's arguments have the wrong shape or type."""

    wire_type = ARGUMENT_ERROR


class GenericError(KiteError):
    """A handler failed; the message is the failure's text."""

    wire_type = GENERIC_ERROR


class TimeoutError(KiteError, builtins.TimeoutError):
    """No response within the call's timeout (local to the caller)."""

    wire_type = TIMEOUT


class DisconnectError(KiteError):
    """The connection closed while the call was pending (local to the caller)."""

    wire_type = DISCONNECT


class SendError(KiteError):
    """The call could not be sent (local to the caller)."""

    wire_type = SEND_ERROR


class InvalidResponseError(KiteError):
    """The peer's response had the wrong shape (local to the caller)."""

    wire_type = INVALID_RESPONSE


_BY_TYPE: dict[str, type[KiteError]] = {
    cls.wire_type: cls
    for cls in (
        MethodNotFoundError,
        AuthenticationError,
        RequestLimitError,
        ArgumentError,
        GenericError,
        TimeoutError,
        DisconnectError,
        SendError,
        InvalidResponseError,
    )
}


def error_class(type: str) -> type[KiteError]:
    """The subclass for a wire type; :class:`KiteError` itself for unknown types."""
    return _BY_TYPE.get(type, KiteError)


def from_wire(obj: Any) -> KiteError:
    """Build a typed error from a received wire error object.

    Tolerates kite.js's shapes: a missing ``type``/``code``, a bare string, or an
    object with only ``message``.
    """
    if isinstance(obj, KiteError):
        return obj
    if isinstance(obj, dict):
        type_ = obj.get("type")
        message = obj.get("message")
        code = obj.get("code")
        id_ = obj.get("id")
        type_ = type_ if isinstance(type_, str) and type_ else GENERIC_ERROR
        message = message if isinstance(message, str) else ("" if message is None else str(message))
        code = code if isinstance(code, str) else ("" if code is None else str(code))
        id_ = id_ if isinstance(id_, str) else ""
        return error_class(type_)(message, type=type_, code=code, id=id_)
    return GenericError("" if obj is None else str(obj))


def to_kite_error(exc: BaseException) -> KiteError:
    """Convert any exception raised by a handler into the error that goes on the wire."""
    if isinstance(exc, KiteError):
        return exc
    return GenericError(str(exc) or type(exc).__name__)


class ProtocolError(Exception):
    """A protocol violation: malformed frame or dnode message."""


class LocalProtocolError(ProtocolError):
    """We tried to do something the protocol does not allow."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol does not allow."""
