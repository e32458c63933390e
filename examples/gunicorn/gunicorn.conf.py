"""gunicorn settings for the kite in ``examples/gunicorn/app.py``.

    gunicorn -c examples/gunicorn/gunicorn.conf.py

serves ``examples.gunicorn.app:app`` on ``$KITE_IP:$KITE_PORT`` (default
``127.0.0.1:3636``, the math example's address). Flags given after ``-c`` win over
these settings (``-b``, ``-w``, another app).
"""

import os

#: The app to serve when none is named on the command line.
wsgi_app = "examples.gunicorn.app:app"

bind = [f"{os.environ.get('KITE_IP') or '127.0.0.1'}:{os.environ.get('KITE_PORT') or '3636'}"]

#: gevent's pywsgi with kite's websocket handler: SockJS websocket, XHR and raw websocket.
worker_class = "kite.server.GeventKiteWorker"

#: One worker by default: an XHR polling session lives in the worker that created it, so
#: several workers need sticky sessions in front (websocket clients do not care).
workers = int(os.environ.get("WEB_CONCURRENCY") or "1")

#: Greenlets per worker, i.e. open connections (each websocket holds one).
worker_connections = 1000

#: Seconds a worker may take to stop. On SIGTERM the kite worker drains its kite
#: (``Kite.shutdown``) for this less 2 s (``kite.transport.wsgi.GRACEFUL_MARGIN``): with 2 it
#: closes its sessions at once (``c[3000,"Go away!"]``); 12 lets calls in flight run 10 s more.
graceful_timeout = 2

#: Seconds without a heartbeat from a worker before the master restarts it.
timeout = 30
