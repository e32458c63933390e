"""kite for Python: micro-services in plain blocking Python, wire-compatible with Go kite and kite.js."""

from .arguments import Arguments, Value
from .client import Client
from .config import Config
from .errors import (
    ArgumentError,
    AuthenticationError,
    DisconnectError,
    GenericError,
    InvalidResponseError,
    KiteError,
    LocalProtocolError,
    MethodNotFoundError,
    ProtocolError,
    RemoteProtocolError,
    RequestLimitError,
    SendError,
    TimeoutError,
)
from .kite import Kite
from .method import RETURN_FIRST, RETURN_LATEST, RETURN_METHOD, Method
from .protocol import Auth, KiteIdentity
from .request import Request

__all__ = [
    "Arguments",
    "ArgumentError",
    "Auth",
    "AuthenticationError",
    "Client",
    "Config",
    "DisconnectError",
    "GenericError",
    "InvalidResponseError",
    "Kite",
    "KiteError",
    "KiteIdentity",
    "LocalProtocolError",
    "Method",
    "MethodNotFoundError",
    "ProtocolError",
    "RemoteProtocolError",
    "RequestLimitError",
    "Request",
    "RETURN_FIRST",
    "RETURN_LATEST",
    "RETURN_METHOD",
    "SendError",
    "TimeoutError",
    "Value",
]
