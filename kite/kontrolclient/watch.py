"""Watching Kontrol for kites coming and going (``getKites`` with a ``watchCallback``, §7.9)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from kite.errors import from_wire
from kite.wire.protocol import KontrolQuery

if TYPE_CHECKING:
    from .client import KontrolClient

log = logging.getLogger("kite.kontrolclient")


class Watcher:
    """A running :meth:`~kite.Kite.watch_kites`; :meth:`cancel` stops it.

    Events are dicts ``{"action": "REGISTER"|"DEREGISTER", "kite": {...}, "url"?, "token"?}``.
    After a Kontrol reconnect the query is watched again (as the 2016 Go kite did),
    which delivers the current kites as ``REGISTER`` events once more.
    """

    def __init__(self, kontrol: KontrolClient, query: KontrolQuery, callback: Callable[[dict[str, Any]], Any]):
        self.query = query
        self.callback = callback
        #: The ``watcherID`` Kontrol returned, or ``""`` (the Go Kontrols return none).
        self.id = ""
        self.cancelled = False
        self._kontrol = kontrol
        self._watch_callback = self._on_watch_callback  # one object, so cancel() can find it

    def __repr__(self) -> str:
        return f"<Watcher {self.query} id={self.id!r} cancelled={self.cancelled}>"

    def _watch(self) -> None:
        entries, self.id = self._kontrol._get_kites(self.query, self._watch_callback)
        for entry in entries:
            self._emit({"action": "REGISTER", "kite": entry["kite"], "url": entry["url"], "token": entry["token"]})

    def _rewatch(self) -> None:
        try:
            self._watch()
        except Exception as exc:
            log.error("cannot watch %s again after reconnecting to Kontrol: %s", self.query, exc)

    def _on_watch_callback(self, *args: Any) -> None:
        """Kontrol's ``watchCallback({"error": ..., "result": <KiteEvent>})``."""
        if self.cancelled:
            return
        response = args[0] if args else None
        if not isinstance(response, dict):
            log.warning("watch %s: ignoring malformed event %r", self.query, response)
            return
        if response.get("error") is not None:
            log.warning("watch %s: Kontrol sent an error: %s", self.query, from_wire(response["error"]))
            return
        event = response.get("result")
        if not isinstance(event, dict) or not isinstance(event.get("action"), str):
            log.warning("watch %s: ignoring malformed event %r", self.query, event)
            return
        self._emit(event)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.cancelled:
            return
        try:
            self.callback(event)
        except Exception:
            log.exception("watch callback %r failed", self.callback)

    def cancel(self) -> None:
        """Stop delivering events; with a ``watcherID``, also tell Kontrol (``cancelWatcher``).

        Local delivery stops even if that call fails (its error is raised).
        """
        if self.cancelled:
            return
        self.cancelled = True
        self._kontrol._forget_watcher(self)
        if self.id:
            self._kontrol.tell("cancelWatcher", self._kontrol.kite.config.timeout, self.id)
