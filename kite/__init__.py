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
from .kontrolclient import (
    KeyRenewer,
    KontrolClient,
    KontrolError,
    NoKitesAvailableError,
    NoKontrolURLError,
    RegisterError,
    RegisterURLError,
    TokenRenewer,
    Watcher,
)
from .method import RETURN_FIRST, RETURN_LATEST, RETURN_METHOD, Method
from .request import Request
from .wire.protocol import Auth, KiteIdentity, KontrolQuery, RegisterResult

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
    "KeyRenewer",
    "Kite",
    "KiteError",
    "KiteIdentity",
    "KiteKeyError",
    "KiteKeyNotFoundError",
    "KontrolClient",
    "KontrolError",
    "KontrolQuery",
    "LocalProtocolError",
    "Method",
    "MethodNotFoundError",
    "NoKitesAvailableError",
    "NoKontrolURLError",
    "ProtocolError",
    "RegisterError",
    "RegisterResult",
    "RegisterURLError",
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
    "Watcher",
]
