"""Kite configuration (Go's ``config.Config``), with the original's defaults (PROTOCOL.md §9)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field

from .connection import DEFAULT_MAX_CONCURRENT_CALLS

#: Transports a client can dial with.
TRANSPORTS = ("websocket", "xhr_polling", "xhr_streaming", "auto")

_TRANSPORT_ALIASES = {
    "websocket": "websocket",
    "xhrpolling": "xhr_polling",
    "xhr_polling": "xhr_polling",
    "xhr": "xhr_polling",
    "xhrstreaming": "xhr_streaming",
    "xhr_streaming": "xhr_streaming",
    "auto": "auto",
}


def normalize_transport(name: str) -> str:
    """Map Go's and our spellings (``WebSocket``, ``XHRPolling``, ``auto``, ...) to a transport name."""
    key = name.strip().lower().replace("-", "_")
    try:
        return _TRANSPORT_ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown transport {name!r}; use one of {', '.join(TRANSPORTS)}") from None


@dataclass
class Config:
    """Everything a kite needs to know about itself and its surroundings."""

    username: str = "unknown"
    environment: str = "unknown"
    region: str = "unknown"
    #: The kite.key's ``jti``; not applied to the kite's id automatically (as in Go).
    id: str = ""
    kite_key: str = ""
    disable_authentication: bool = False
    #: Run a connection's incoming calls one at a time, in arrival order.
    disable_concurrency: bool = False
    transport: str = "websocket"
    ip: str = "0.0.0.0"
    port: int = 0
    kontrol_url: str = ""
    kontrol_key: str = ""
    kontrol_user: str = ""
    verify_func: Callable[[str], None] | None = None
    #: Seconds a kontrol-key trust decision is cached (0 = the default, 5 min).
    verify_ttl: float = 0.0
    verify_audience_func: Callable[..., None] | None = None
    #: Seconds for Kontrol calls and dials (2018's ``Config.Timeout``).
    timeout: float = 15.0
    #: Seconds bounding a client's dial; ``None`` waits as long as the OS does.
    dial_timeout: float | None = 15.0
    #: Cap on the reconnect back-off, seconds.
    reconnect_max_interval: float = 60.0
    #: Incoming calls one connection may run at once.
    max_concurrent_calls: int = DEFAULT_MAX_CONCURRENT_CALLS
    #: SockJS heartbeat (``h``) interval, seconds (Go kites use 10 s).
    heartbeat_interval: float = 10.0
    #: How long a polling session lives with no poll attached, seconds.
    disconnect_delay: float = 10.0
    #: Largest message accepted from a peer, bytes.
    max_message_size: int = 16 * 1024 * 1024
    extra: dict = field(default_factory=dict)

    def copy(self) -> Config:
        """A deep copy (functions are shared)."""
        return copy.copy(self)
