"""Fetching Kontrol's public key again and again (Go's ``NewKeyRenewer``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import gevent

if TYPE_CHECKING:
    from .client import KontrolClient


class KeyRenewer:
    """Fetches Kontrol's public key every ``interval`` seconds (:meth:`~kite.Kite.new_key_renewer`)."""

    def __init__(self, kontrol: KontrolClient, interval: float):
        if interval <= 0:
            raise ValueError(f"key renewal interval must be positive, got {interval!r}")
        self.interval = interval
        self._kontrol = kontrol
        self._greenlet = kontrol._spawn(self._run)

    def _run(self) -> None:
        while True:
            gevent.sleep(self.interval)
            try:
                self._kontrol.get_key()
            except Exception as exc:
                self._kontrol.kite.log.warning("Key renew failed: %s", exc)

    @property
    def running(self) -> bool:
        return not self._greenlet.dead

    def stop(self) -> None:
        """Stop renewing (idempotent)."""
        self._greenlet.kill(block=False)
