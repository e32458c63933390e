"""What the in-process backends (memory, sqlite) share: events from writes, and the purger.

These backends see every change themselves, so they derive watch events from the
old and new state of each write (:func:`change_events`) and publish them at once.
Expired kites are hidden from reads immediately; a purge greenlet deletes them
every ``purge_interval`` seconds and sends their ``DEREGISTER`` events.
"""

from __future__ import annotations

import logging
import weakref
from abc import abstractmethod
from typing import Any

import gevent

from .base import DEREGISTER, REGISTER, KiteEvent, KiteRecord, QueryLike, Storage, WatchCallback, Watcher
from .query import KontrolQuery
from .watch import WatchHub

log = logging.getLogger(__name__)

#: How often expired kites are deleted and announced. Reads never return expired
#: kites anyway, so this only bounds how late watchers hear of an expiry (Kontrol's
#: TTL is 90 s; a second of lag is nothing) while keeping the purge query rare.
DEFAULT_PURGE_INTERVAL = 1.0


def change_events(old: KiteRecord | None, new: KiteRecord | None) -> list[KiteEvent]:
    """The events for a kite going from ``old`` to ``new`` (None: absent).

    New or changed URL/key id: REGISTER; gone: DEREGISTER; identity changed under the
    same id: DEREGISTER of the old identity, then REGISTER; unchanged: nothing.
    """
    events = []
    if old is not None and (new is None or str(old.kite) != str(new.kite)):
        events.append(KiteEvent(DEREGISTER, old.kite, old.url, old.key_id))
        old = None
    if new is not None and (old is None or (old.url, old.key_id) != (new.url, new.key_id)):
        events.append(KiteEvent(REGISTER, new.kite, new.url, new.key_id))
    return events


def purge_forever(ref: weakref.ref[Any], interval: float) -> None:
    """Run the storage's ``_purge_round()`` every ``interval`` seconds until it is closed or gone.

    Holds only a weak reference between rounds, so a storage that is dropped without
    close() is still collected (and this greenlet then ends).
    """
    while True:
        gevent.sleep(interval)
        storage = ref()
        if storage is None or storage.closed:
            return
        storage._purge_round()
        del storage


class LocalStorage(Storage):
    """Base of the backends whose data lives in this process's reach."""

    def __init__(self, purge_interval: float = DEFAULT_PURGE_INTERVAL) -> None:
        if purge_interval <= 0:
            raise ValueError("purge_interval must be positive")
        self.closed = False
        self._hub = WatchHub()
        self._purger = gevent.spawn(purge_forever, weakref.ref(self), purge_interval)

    def _purge_round(self) -> None:
        """One round of the purger (:func:`purge_forever`)."""
        try:
            self.purge_expired()
        except Exception:
            log.exception("purging expired kites failed")

    @abstractmethod
    def _purge_expired(self) -> list[KiteRecord]:
        """Delete the expired kites and return them."""

    @abstractmethod
    def _close(self) -> None:
        """Release the backend's resources."""

    def purge_expired(self) -> int:
        """Delete expired kites now, announce them, and return how many there were."""
        expired = self._purge_expired()
        for record in expired:
            self._publish(change_events(record, None))
        if expired:
            log.debug("purged %d expired kites", len(expired))
        return len(expired)

    def _publish(self, events: list[KiteEvent]) -> None:
        for event in events:
            self._hub.publish(event)

    def watch(self, query: QueryLike, callback: WatchCallback) -> Watcher:
        return self._hub.add(KontrolQuery.coerce(query).validate(), callback)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._purger.kill(block=False)
        self._hub.close()
        self._close()
