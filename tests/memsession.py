"""An in-memory Session pair, to test the runtime without a transport."""

from gevent.queue import Queue

from kite.transport.session import Session, SessionClosed

_END = object()


class MemorySession(Session):
    def __init__(self, inbox: Queue, outbox: Queue, name: str):
        self._inbox, self._outbox = inbox, outbox
        self._closed = False
        self.remote_addr = name
        self.peer: MemorySession | None = None
        self.sent: list[str] = []

    def send(self, message: str) -> None:
        if self._closed:
            raise SessionClosed()
        self.sent.append(message)
        self._outbox.put(message)

    def recv(self):
        if self._closed:
            return None
        item = self._inbox.get()
        if item is _END:
            self._closed = True
            return None
        return item

    def close(self, code=3000, reason="Go away!"):
        if not self._closed:
            self._closed = True
            self._inbox.put(_END)
            self._outbox.put(_END)

    @property
    def closed(self):
        return self._closed


def session_pair():
    a_to_b, b_to_a = Queue(), Queue()
    a = MemorySession(b_to_a, a_to_b, "a")
    b = MemorySession(a_to_b, b_to_a, "b")
    a.peer, b.peer = b, a
    return a, b
