"""kite for Python: micro-services in plain blocking Python, wire-compatible with Go kite and kite.js."""

from .arguments import Arguments, Value
from .auth import KeyNotTrustedError
from .client import Client
from .config import Config, ConfigError
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
from .kitekey import KiteKeyError, KiteKeyNotFoundError
from .method import RETURN_FIRST, RETURN_LATEST, RETURN_METHOD, Method
from .protocol import Auth, KiteIdentity
from .request import Request
from .tokenrenewer import TokenRenewer

__all__ = [
    "Arguments",
    "ArgumentError",
    "Auth",
    "AuthenticationError",
    "Client",
    "Config",
    "ConfigError",
    "DisconnectError",
    "GenericError",
    "InvalidResponseError",
    "KeyNotTrustedError",
    "Kite",
    "KiteError",
    "KiteIdentity",
    "KiteKeyError",
    "KiteKeyNotFoundError",
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
    "TokenRenewer",
    "Value",
]
