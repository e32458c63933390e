"""The errors the proxy kites send their callers (wire type ``genericError``)."""

from __future__ import annotations

from kite.errors import GenericError


class ProxyError(GenericError):
    """A proxy kite refused a request."""


class KiteIdTakenError(ProxyError):
    """``register`` claimed a kite id that another user holds (or held moments ago)."""
