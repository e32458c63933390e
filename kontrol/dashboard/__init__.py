"""Kontrol's dashboard (``kontrol --dashboard``): a live web view of the registry behind a login.

:class:`Dashboard` ties the pieces together for :meth:`kontrol.Kontrol.enable_dashboard`:
:mod:`.feed` (the rows, from the storage's change feed and the registry), :mod:`.login` (kite-key
and password logins, session cookies) and :mod:`.blueprint` (the Flask routes under ``/dashboard``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .blueprint import URL_PREFIX, dashboard_blueprint
from .feed import Feed
from .login import Gate, check_password, hash_password, read_password_file

if TYPE_CHECKING:
    from ..kontrol import Kontrol

log = logging.getLogger("kontrol.dashboard")

__all__ = ["URL_PREFIX", "Dashboard", "check_password", "dashboard_blueprint", "hash_password",
           "read_password_file"]


class Dashboard:
    """The dashboard of one Kontrol: its feed, its login gate and its blueprint (mounted by Kontrol)."""

    def __init__(self, kontrol: Kontrol, password_file: str | None = None, url_prefix: str = URL_PREFIX):
        self.url_prefix = url_prefix
        self.feed = Feed(kontrol)
        self.gate = Gate(kontrol, password_file)
        self.blueprint = dashboard_blueprint(kontrol, self.feed, self.gate)

    def start(self) -> None:
        """Start following the registry (Kontrol calls it when it starts serving)."""
        self.feed.start()

    def close(self) -> None:
        """Stop following and end the open streams."""
        self.feed.close()
