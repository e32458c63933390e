"""Kontrol, the kite registry (PROTOCOL.md §7): a kite where kites register, find each other
and get tokens, on pluggable storage (:mod:`kontrol.storage`).

``Kontrol`` and friends are imported on first use, so that ``python -m kontrol`` can
monkey-patch before anything imports ``ssl`` or ``socket``.
"""

from typing import Any

__all__ = ["DEFAULT_PORT", "KONTROL_VERSION", "Kontrol", "refuse_machines"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import kontrol

        return getattr(kontrol, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
