"""The math kite as a WSGI application for gunicorn (settings in ``gunicorn.conf.py``).

A :class:`kite.Kite` is a WSGI app: SockJS (and raw websocket) under ``/kite``, its
Flask app elsewhere. Serve it with the settings next to this file::

    gunicorn -c examples/gunicorn/gunicorn.conf.py                     # 127.0.0.1:3636
    KITE_PORT=4242 gunicorn -c examples/gunicorn/gunicorn.conf.py      # another port
    gunicorn -c examples/gunicorn/gunicorn.conf.py -b 0.0.0.0:3636 examples.gunicorn.app:app

and call it like any kite::

    python -m examples.math.client --url http://127.0.0.1:3636/kite --arg 5

Methods: ``square(n)`` -> ``n * n`` (no authentication, like the math example), and
``GET /healthz`` answers ``ok`` (a plain Flask route next to the kite).
"""

import logging
import os

from kite import Kite, Request

log = logging.getLogger("examples.gunicorn")


def square(r: Request) -> float:
    """``square(n)``: ``n * n``."""
    number = r.args.one().must_float64()
    log.info("worker %d: square(%g)", os.getpid(), number)
    return number * number


def build_kite() -> Kite:
    """The math kite; gunicorn binds the socket, so ``config.ip``/``config.port`` are not used."""
    k = Kite("math", "1.0.0")
    k.config.disable_authentication = True
    k.handle_func("square", square)
    k.handle_http("/healthz", lambda: "ok")
    return k


#: What gunicorn loads (``examples.gunicorn.app:app``).
app = build_kite()
