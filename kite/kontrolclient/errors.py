"""The errors of the kite-side Kontrol helpers (:mod:`kite.kontrolclient`)."""

from __future__ import annotations

from typing import Any

from kite.errors import KiteError

#: ``ErrNoKitesAvailable``, misspelt as in Go (callers may compare the text).
NO_KITES_AVAILABLE = "no kites availabile"
NO_KONTROL_URL = "no kontrol URL given in config"


class KontrolError(KiteError):
    """A Kontrol helper failed locally (the wire type is ``genericError``)."""


class NoKontrolURLError(KontrolError):
    """``config.kontrol_url`` is empty, so there is no Kontrol to talk to."""

    def __init__(self, message: str = NO_KONTROL_URL, **kwargs: Any):
        super().__init__(message, **kwargs)


class NoKitesAvailableError(KontrolError):
    """``get_kites`` found no kite for the query (Go's ``ErrNoKitesAvailable``)."""

    def __init__(self, message: str = NO_KITES_AVAILABLE, **kwargs: Any):
        super().__init__(message, **kwargs)


class RegisterError(KontrolError):
    """Kontrol refused a registration, or its answer was unusable."""


class RegisterURLError(KontrolError):
    """:meth:`~kite.Kite.register_url` cannot tell which address to register."""


class ProxyRegisterError(KontrolError):
    """A proxy kite refused ``register``, or answered with something that is not a public URL."""
