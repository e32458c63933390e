"""Serving on 127.0.0.1 for the tests: WSGI apps (:func:`serve`), kites (:func:`serve_kite`), and
the SockJS echo session handler (:class:`Echo`)."""

import contextlib

import gevent
from gevent.event import Event

from kite.transport.sockjs.server import SockJSServer
from kite.transport.wsgi import make_server


@contextlib.contextmanager
def serve(app, server_class=None, **kwargs):
    """Serve ``app`` on a free port of 127.0.0.1 (``make_server``, or ``server_class``); yields the server.

    ``kwargs`` go to ``make_server``. On exit a :class:`SockJSServer` app is closed, then the server stopped.
    """
    if server_class:
        server = server_class(("127.0.0.1", 0), app, log=None, **kwargs)
    else:
        server = make_server(app, "127.0.0.1", 0, **kwargs)
    server.start()
    try:
        yield server
    finally:
        if isinstance(app, SockJSServer):
            app.close()
        server.stop(timeout=1)


@contextlib.contextmanager
def running_kontrol(kontrol):
    """Serve ``kontrol`` in a greenlet for the block (it must start within 5 s); closed after it."""
    server = gevent.spawn(kontrol.run)
    try:
        assert kontrol.kite.server_ready_notify().wait(5), "Kontrol did not start"
        yield kontrol
    finally:
        kontrol.close()
        server.join(timeout=5)


def serve_kite(k):
    """Run kite ``k`` in a greenlet; return it once it serves (within 5 s)."""
    gevent.spawn(k.run)
    assert k.server_ready_notify().wait(5)
    return k


class Echo:
    """on_session: echoes; "close" closes the session; "burst" sends two messages and closes;
    "raise" makes on_session fail.

    Records the sessions, every message received, and the sessions that ended
    (``any_ended`` is set when the first one does).
    """

    def __init__(self):
        self.sessions = []
        self.received = []
        self.ended = []
        self.any_ended = Event()

    def __call__(self, session):
        self.sessions.append(session)
        try:
            while (message := session.recv()) is not None:
                self.received.append(message)
                if message == "close":
                    session.close()
                elif message == "burst":
                    session.send("one")
                    session.send("two")
                    session.close()
                elif message == "raise":
                    raise RuntimeError("handler blew up")
                else:
                    session.send(message)
        finally:
            self.ended.append(session)
            self.any_ended.set()
