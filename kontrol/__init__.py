"""Kontrol, the kite registry (PROTOCOL.md §7): a kite where kites register, find each other
and get tokens, on pluggable storage (:mod:`kontrol.storage`)."""

from .kontrol import DEFAULT_PORT, KONTROL_VERSION, Kontrol, refuse_machines

__all__ = ["DEFAULT_PORT", "KONTROL_VERSION", "Kontrol", "refuse_machines"]
