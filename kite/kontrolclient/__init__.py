"""The kite side of Kontrol, the kite registry (PROTOCOL.md §7).

:class:`KontrolClient` (``kite.kontrol``) holds the shared Kontrol connection and
registers (over it, forever, or over HTTP with :mod:`.heartbeat`), finds
(``get_kites``, ``dial_kite``), watches (:class:`Watcher`) and fetches tokens and
keys; :class:`TokenRenewer` keeps a token client's credential fresh; the register
URL is worked out in :mod:`.registerurl`; registering through a proxy kite is
:mod:`.proxyclient`; its errors are in :mod:`.errors`.
"""

from .client import KontrolClient
from .errors import (
    KontrolError,
    NoKitesAvailableError,
    NoKontrolURLError,
    ProxyRegisterError,
    RegisterError,
    RegisterURLError,
)
from .keyrenewer import KeyRenewer
from .proxyclient import ProxyPlan, ProxyRegistrar
from .tokenrenewer import TokenRenewer
from .watch import Watcher

__all__ = [
    "KeyRenewer",
    "KontrolClient",
    "KontrolError",
    "NoKitesAvailableError",
    "NoKontrolURLError",
    "ProxyPlan",
    "ProxyRegisterError",
    "ProxyRegistrar",
    "RegisterError",
    "RegisterURLError",
    "TokenRenewer",
    "Watcher",
]
