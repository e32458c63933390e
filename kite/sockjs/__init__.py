"""SockJS: the transport Go kites and kite.js speak (PROTOCOL.md §1).

Re-exports the public names of :mod:`kite.sockjs.frames`,
:mod:`kite.sockjs.server` and :mod:`kite.sockjs.client`. The server and client
names are loaded lazily, so that importing the pure :mod:`kite.sockjs.frames`
does not pull in gevent.
"""

from __future__ import annotations

import importlib
from typing import Any

from kite.sockjs.frames import (
    HEARTBEAT,
    OPEN,
    decode_client_payload,
    decode_server_frame,
    encode_client_payload,
    encode_close,
    encode_messages,
)

_LAZY = {
    "SockJSServer": "kite.sockjs.server",
    "DialError": "kite.sockjs.client",
    "DialTimeoutError": "kite.sockjs.client",
    "dial": "kite.sockjs.client",
}

__all__ = [
    "HEARTBEAT",
    "OPEN",
    "DialError",
    "DialTimeoutError",
    "SockJSServer",
    "decode_client_payload",
    "decode_server_frame",
    "dial",
    "encode_client_payload",
    "encode_close",
    "encode_messages",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'kite.sockjs' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
