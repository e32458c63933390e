"""Watch machinery shared by the backends.

* :class:`WatchHub` fans events out to the watchers whose query matches. Each
  watcher has its own queue and delivery greenlet, so callbacks run in order, off
  the writer's greenlet, and a slow callback holds up only its own watcher.
* :class:`EventPump` follows a remote change feed (etcd v3 watch stream, etcd v2
  long-poll) in one greenlet per storage instance, resuming from the last seen
  revision after errors, with capped exponential backoff: watchers survive etcd
  restarts and short outages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping

import gevent
from gevent.queue import Queue

from .base import KiteEvent, WatchCallback, Watcher
from .query import KontrolQuery

log = logging.getLogger(__name__)

#: Events queued for one watcher before new ones are dropped (with a warning): a stuck
#: callback must not grow Kontrol's memory without bound. 10k events is minutes of
#: churn for a large registry and a few MB.
MAX_PENDING_EVENTS = 10_000
#: First delay before re-following a broken change feed; short so that a restarted
#: etcd is picked up quickly.
PUMP_MIN_BACKOFF = 0.1
#: Longest delay between reconnection attempts while etcd stays down.
PUMP_MAX_BACKOFF = 5.0

_STOP = object()


class HubWatcher(Watcher):
    """A watcher registered with a :class:`WatchHub`."""

    def __init__(self, hub: WatchHub, query: KontrolQuery, callback: WatchCallback, after_revision: int,
                 seen: Mapping[str, int] | None = None) -> None:
        self._hub = hub
        self.query = query
        self._callback = callback
        self._after_revision = after_revision
        self._seen = seen or {}
        self._active = True
        self._queue: Queue = Queue()
        self._greenlet = gevent.spawn(self._deliver)

    @property
    def active(self) -> bool:
        return self._active

    def offer(self, event: KiteEvent) -> None:
        """Queue ``event`` if it matches and is newer than this watcher's start."""
        if not self._active or (event.revision and event.revision <= self._after_revision):
            return
        seen = self._seen.get(event.kite.id)
        if seen is not None and event.revision <= seen:
            return
        if not self.query.matches(event.kite):
            return
        if self._queue.qsize() >= MAX_PENDING_EVENTS:
            log.warning("watcher for %s is %d events behind; dropping %s", self.query, MAX_PENDING_EVENTS, event)
            return
        self._queue.put(event)

    def _deliver(self) -> None:
        while True:
            event = self._queue.get()
            if event is _STOP or not self._active:
                return
            try:
                self._callback(event)
            except Exception:
                log.exception("watch callback for %s failed on %s", self.query, event)

    def cancel(self) -> None:
        if not self._active:
            return
        self._active = False
        self._queue.put(_STOP)
        self._hub.remove(self)


class WatchHub:
    """The watchers of one storage instance. ``on_empty`` runs when the last one leaves."""

    def __init__(self, on_empty: Callable[[], None] | None = None) -> None:
        self._watchers: list[HubWatcher] = []
        self._on_empty = on_empty

    def add(self, query: KontrolQuery, callback: WatchCallback, after_revision: int = 0,
            seen: Mapping[str, int] | None = None) -> HubWatcher:
        """Register a watcher; events with a revision ``<= after_revision`` are not for it, nor those of
        a kite in ``seen`` (id -> revision) up to that revision (changes it could already read)."""
        watcher = HubWatcher(self, query, callback, after_revision, seen)
        self._watchers.append(watcher)
        return watcher

    def remove(self, watcher: HubWatcher) -> None:
        """Forget ``watcher`` (called by its ``cancel``)."""
        if watcher in self._watchers:
            self._watchers.remove(watcher)
            if not self._watchers and self._on_empty is not None:
                self._on_empty()

    def publish(self, event: KiteEvent) -> None:
        """Hand ``event`` to every matching watcher. Never blocks."""
        for watcher in list(self._watchers):
            watcher.offer(event)

    def __len__(self) -> int:
        return len(self._watchers)

    def close(self) -> None:
        """Cancel every watcher."""
        self._on_empty = None
        for watcher in list(self._watchers):
            watcher.cancel()


#: A change feed: called with the revision to resume from, it yields
#: ``(next_revision, events)`` per message and returns or raises when the feed breaks;
#: it raises :class:`FeedGap` when events were lost (etcd compacted its history).
Follow = Callable[[int], Iterator[tuple[int, list[KiteEvent]]]]


class FeedGap(Exception):
    """A change feed cannot go on from where it was: events up to ``resume_at`` are lost for good."""

    def __init__(self, resume_at: int):
        super().__init__(f"events before revision {resume_at} are lost")
        self.resume_at = resume_at


class EventPump:
    """One greenlet following a change feed into a :class:`WatchHub`, reconnecting on errors."""

    def __init__(self, name: str, follow: Follow, start_revision: int, publish: Callable[[KiteEvent], None]) -> None:
        self.name = name
        self.next_revision = start_revision
        self._follow = follow
        self._publish = publish
        self._greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        backoff = PUMP_MIN_BACKOFF
        while True:
            try:
                for next_revision, events in self._follow(self.next_revision):
                    for event in events:
                        self._publish(event)
                    self.next_revision = max(self.next_revision, next_revision)
                    backoff = PUMP_MIN_BACKOFF
                log.info("%s: change feed ended; resuming from revision %d", self.name, self.next_revision)
            except FeedGap as gap:
                self.next_revision = max(self.next_revision, gap.resume_at)
                log.warning("%s: %s; resuming at %d", self.name, gap, self.next_revision)
            except Exception as e:
                log.warning(
                    "%s: change feed broke (%s); resuming from revision %d in %.1f s",
                    self.name,
                    e,
                    self.next_revision,
                    backoff,
                )
            gevent.sleep(backoff)
            backoff = min(backoff * 2, PUMP_MAX_BACKOFF)

    def stop(self) -> None:
        """Stop following (kills the greenlet; the feed's ``finally`` closes its connection)."""
        self._greenlet.kill(block=False)
