"""Serving a kite: the names users put on command lines and in their own servers.

``gunicorn -k kite.server.GeventKiteWorker --graceful-timeout 5 app:app`` runs any
kite (it is a WSGI app) under gunicorn; :func:`make_server` builds the gevent WSGI
server :meth:`kite.Kite.run` uses. Both live in :mod:`kite.transport.wsgi`.
"""

from .transport.wsgi import make_server

try:
    from .transport.wsgi import GeventKiteWorker
except ImportError:  # pragma: no cover - gunicorn (an optional extra) is not installed
    pass

__all__ = ["GeventKiteWorker", "make_server"]
