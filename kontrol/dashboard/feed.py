"""The dashboard's live view of the registry, and the event streams that carry it to browsers.

**Where the rows come from.** Membership (which kites are registered) follows the storage's change
feed: one storage watch on every kite (:data:`ALL_KITES`), started with Kontrol. That feed is the
same for every Kontrol on a shared storage (etcd, postgres): kites registered through another
``--workers`` process or another Kontrol appear and go too, and so do expiries. What the storage
does not know -- how a kite registered (websocket, HTTP), when it registered here and when it was
last heard from -- comes from this Kontrol's in-memory registry (:mod:`kontrol.registry`), read
every :data:`SYNC_INTERVAL`; a kite this process does not serve shows an empty ``kind`` and no
"last heard". Kites registered elsewhere *before* this process started are listed from the
backend's in-memory replica when it keeps one (etcd v3, once it is in sync); on the other backends
(the storage interface has no "list every kite") they show once they register again or heartbeat
here (an HTTP kite heartbeating here is adopted into the registry), within :data:`SYNC_INTERVAL`.

**Streams.** Each browser's server-sent event stream is a :class:`Stream`: a bounded queue filled
by the feed and drained by the stream's own WSGI greenlet. A stream gets its snapshot and its
subscription at the same instant (no yield in between), so no change falls between them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import gevent
from gevent.queue import Empty, Full, Queue

from kite.wire.protocol import PATH_FIELDS, KiteIdentity

from ..registry import SELF
from ..storage import DEREGISTER, KiteEvent, KontrolQuery, StorageError, Watcher

if TYPE_CHECKING:
    from ..kontrol import Kontrol
    from ..registry import Entry

log = logging.getLogger("kontrol.dashboard")

#: Seconds between reads of the registry's liveness data (kind, last heard) into the rows; the
#: page counts the seconds since itself in between. Kites heartbeat every 10 s.
SYNC_INTERVAL = 2.0
#: Seconds between reads of the key pairs for the key-pair panel (a storage call; rotations are rare).
KEYPAIR_SYNC_INTERVAL = 30.0
#: Event streams served at once by one process: each holds a connection and a greenlet.
MAX_STREAMS = 32
#: Events queued for one stream before it is ended; the browser then reconnects and gets a fresh
#: snapshot, which is cheaper than an unbounded queue behind a stalled client.
MAX_STREAM_BACKLOG = 1000

_END = ("end", None)


@dataclass(frozen=True)
class _AnyKite(KontrolQuery):
    """The query that matches every kite: empty fields (KontrolQuery's own rules would ask for a
    username; the storage's watch applies ``matches``, which an all-empty query passes)."""

    def validate(self) -> KontrolQuery:
        return self


#: Every kite, for the storage watch.
ALL_KITES = _AnyKite()


def parse_filter(text: str) -> KontrolQuery | None:
    """The filter box's text as a query: ``/username/environment/name/version/region/hostname/id``
    (leading ``/`` optional, trailing fields may be left out); None for an empty filter.

    Raises :class:`~kontrol.storage.InvalidQueryError` as ``getKites`` would for the same query.
    """
    path = text.strip().strip("/")
    if not path:
        return None
    parts = [p.strip() for p in path.split("/")]
    values = dict(zip(PATH_FIELDS, parts, strict=False))
    if len(parts) > len(PATH_FIELDS):
        values["id"] = "/".join(parts[len(PATH_FIELDS) - 1:])  # refused by validate: an id holds no '/'
    return KontrolQuery(**values).validate()


@dataclass
class Row:
    """One registered kite as the dashboard shows it. Times are Unix seconds (None: unknown)."""

    kite: KiteIdentity
    url: str
    key_id: str
    kind: str = ""
    registered_at: float | None = None
    last_seen: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {**self.kite.to_wire(), "url": self.url, "keyId": self.key_id, "kind": self.kind,
                "registeredAt": self.registered_at, "lastSeen": self.last_seen}

    def liveness(self) -> tuple[str, float | None, float | None]:
        return self.kind, self.registered_at, self.last_seen


def _clock_offset() -> float:
    """What to add to a ``time.monotonic()`` instant to get Unix seconds (taken once, so that the
    same instant always converts to the same time and unchanged rows stay unchanged)."""
    return time.time() - time.monotonic()


class TooManyStreams(Exception):
    """:data:`MAX_STREAMS` streams are open already."""


class Stream:
    """The events for one browser: a bounded queue, filtered by the browser's query."""

    def __init__(self, query: KontrolQuery | None):
        self.query = query
        self._queue: Queue[tuple[str, Any]] = Queue(MAX_STREAM_BACKLOG)

    def wants(self, kite: KiteIdentity) -> bool:
        return self.query is None or self.query.matches(kite)

    def offer(self, name: str, data: Any) -> None:
        """Queue an event; a stream too far behind is ended (its browser reconnects)."""
        try:
            self._queue.put_nowait((name, data))
        except Full:
            log.info("dashboard stream %d events behind: ending it (the browser reconnects)", MAX_STREAM_BACKLOG)
            self.end()

    def end(self) -> None:
        """Make :meth:`next` return the end marker (after what is queued, or at once when full)."""
        while True:
            try:
                self._queue.put_nowait(_END)
                return
            except Full:
                try:
                    self._queue.get_nowait()
                except Empty:
                    pass

    def next(self, timeout: float) -> tuple[str, Any] | None:
        """The next ``(event name, data)``; None after ``timeout`` seconds; ``("end", None)`` when ended."""
        try:
            item: tuple[str, Any] = self._queue.get(timeout=timeout)
        except Empty:
            return None
        return item


class Feed:
    """Rows of every registered kite, kept current, and the open streams they go to."""

    def __init__(self, kontrol: Kontrol):
        self.kontrol = kontrol
        self._rows: dict[str, Row] = {}
        self._streams: set[Stream] = set()
        self._watcher: Watcher | None = None
        self._syncer: gevent.Greenlet[[], None] | None = None
        self._keypairs: list[dict[str, Any]] = []
        self._keypairs_at = 0.0
        self._offset = _clock_offset()
        self._seeded = False

    # -- lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        """Follow the storage and the registry (idempotent); call before Kontrol serves. A storage
        that is unavailable now is watched as soon as it answers (retried every :data:`SYNC_INTERVAL`)."""
        if self._syncer is not None:
            return
        self._watch()
        if self._watcher is not None:
            self._seed_from_replica()
        self._refresh()
        self._syncer = gevent.spawn(self._sync_forever)

    def _watch(self) -> None:
        try:
            self._watcher = self.kontrol.storage.watch(ALL_KITES, self._on_event)
        except StorageError as exc:
            log.warning("dashboard: cannot watch the storage yet (%s); retrying", exc)

    def _seed_from_replica(self) -> None:
        """Add the kites of the storage's replica (etcd v3 keeps every kite in memory), once it is in sync."""
        replica = getattr(self.kontrol.storage, "replica", None)
        if replica is None:
            self._seeded = True
            return
        if not replica.ready.is_set():
            return
        self._seeded = True
        for record in replica.scan(()):
            if record.kite.id not in self._rows:
                row = self._rows[record.kite.id] = Row(record.kite, record.url, record.key_id)
                self._publish("add", row)

    def close(self) -> None:
        """Stop following and end every stream."""
        if self._watcher is not None:
            self._watcher.cancel()
        if self._syncer is not None:
            self._syncer.kill(block=False)
        for stream in list(self._streams):
            stream.end()
        self._streams.clear()

    # -- reading -------------------------------------------------------------------------------

    def rows(self, query: KontrolQuery | None = None) -> list[dict[str, Any]]:
        """The rows matching ``query`` (None: all), as JSON objects."""
        return [row.to_json() for row in self._rows.values() if query is None or query.matches(row.kite)]

    def key_pairs(self) -> list[dict[str, Any]]:
        """Kontrol's key pairs for the panel: id, created, retired, which one signs (never a private key)."""
        if not self._keypairs or time.monotonic() >= self._keypairs_at + KEYPAIR_SYNC_INTERVAL:
            self._read_key_pairs()
        return self._keypairs

    def _read_key_pairs(self) -> bool:
        """Re-read the key pairs; True when the panel changed."""
        self._keypairs_at = time.monotonic()
        try:
            pairs = self.kontrol.keypairs.storage.list_key_pairs(include_deleted=True)
            current = self.kontrol.keypairs.current().id
        except StorageError as exc:
            log.warning("dashboard: cannot list key pairs: %s", exc)
            return False
        panel = [{"id": p.id, "createdAt": p.created_at, "retiredAt": p.deleted_at, "current": p.id == current}
                 for p in pairs]
        changed = panel != self._keypairs
        self._keypairs = panel
        return changed

    # -- streams -------------------------------------------------------------------------------

    def subscribe(self, query: KontrolQuery | None) -> tuple[Stream, list[dict[str, Any]]]:
        """A new stream for ``query`` and the snapshot it starts from (taken without yielding)."""
        if len(self._streams) >= MAX_STREAMS:
            raise TooManyStreams(f"{MAX_STREAMS} dashboard streams are open")
        stream = Stream(query)
        self._streams.add(stream)
        return stream, self.rows(query)

    def unsubscribe(self, stream: Stream) -> None:
        self._streams.discard(stream)

    @property
    def stream_count(self) -> int:
        return len(self._streams)

    def _publish(self, name: str, row: Row) -> None:
        data = {"id": row.kite.id} if name == "remove" else row.to_json()
        for stream in list(self._streams):
            if stream.wants(row.kite):
                stream.offer(name, data)

    # -- following -----------------------------------------------------------------------------

    def _on_event(self, event: KiteEvent) -> None:
        """A change from the storage's feed (its own greenlet, in order)."""
        kite_id = event.kite.id
        if event.action == DEREGISTER:
            row = self._rows.pop(kite_id, None)
            if row is not None:
                self._publish("remove", row)
            return
        old = self._rows.get(kite_id)
        row = Row(event.kite, event.url, event.key_id)
        if old is not None:
            row.kind, row.registered_at, row.last_seen = old.liveness()
        else:
            row.registered_at = round(time.time(), 1)  # heard of now; the registry's own time replaces it
        entry = self.kontrol.registry.entry(kite_id)
        if entry is not None:
            self._apply(row, entry)
        self._rows[kite_id] = row
        self._publish("update" if old is not None else "add", row)

    def _apply(self, row: Row, entry: Entry) -> None:
        """Copy the registry's liveness of a kite into its row (Kontrol's own entry is never "heard")."""
        row.kind = entry.kind
        row.registered_at = round(entry.registered_at, 1)
        row.last_seen = None if entry.kind == SELF else round(entry.last_seen + self._offset, 1)

    def _refresh(self) -> None:
        """Bring the rows' liveness in step with the registry; add the registry's kites the storage
        feed did not announce (registered before the feed started, adopted on a heartbeat)."""
        for entry in self.kontrol.registry.entries():
            row = self._rows.get(entry.kite.id)
            if row is None:
                row = self._rows[entry.kite.id] = Row(entry.kite, entry.url, entry.key_id)
                self._apply(row, entry)
                self._publish("add", row)
                continue
            before = row.liveness()
            self._apply(row, entry)
            if row.liveness() != before:
                self._publish("update", row)

    def _sync_forever(self) -> None:
        while True:
            gevent.sleep(SYNC_INTERVAL)
            try:
                if self._watcher is None:
                    self._watch()
                if self._watcher is not None and not self._seeded:
                    self._seed_from_replica()
                self._refresh()
                if self._streams and time.monotonic() >= self._keypairs_at + KEYPAIR_SYNC_INTERVAL:
                    if self._read_key_pairs():
                        for stream in list(self._streams):
                            stream.offer("keypairs", self._keypairs)
            except Exception:
                log.exception("dashboard sync failed")
