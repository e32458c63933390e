"""The "math" kite used by the interop tests, the gunicorn test and as a gunicorn app.

A :class:`kite.Kite` is a WSGI application, so gunicorn serves it directly::

    gunicorn -k kite.server.GeventKiteWorker -b 127.0.0.1:3636 tests.gunicorn_app:app

Methods (``withArgs`` in brackets), mirroring the kite.js reference server
(tests/interop/kitejs/server.js):

* ``square [x]`` -> ``x * x`` (a float: 4 -> 16.0)
* ``echo [a, ...]`` -> ``a``
* ``add [a, b, ...]`` -> the sum of all arguments
* ``fail []`` -> raises ``Exception("boom")`` (genericError "boom" on the wire)
* ``callback [fn]`` -> calls ``fn("hello")``, then returns ``"done"``
"""

from __future__ import annotations

from kite import Kite


def _square(r):
    return r.args.one().must_float64() ** 2


def _echo(r):
    return r.args[0]


def _add(r):
    return sum(r.args[i] for i in range(len(r.args)))


def _fail(r):
    raise Exception("boom")


def _callback(r):
    r.args.one().must_function()("hello")
    return "done"


def make_math_kite(name: str = "math", version: str = "1.0.0", ip: str = "127.0.0.1", port: int = 0) -> Kite:
    """A fresh math kite with authentication off, listening on ``ip:port`` once ``run()``."""
    k = Kite(name, version)
    k.config.ip = ip
    k.config.port = port
    k.config.disable_authentication = True
    k.handle_func("square", _square)
    k.handle_func("echo", _echo)
    k.handle_func("add", _add)
    k.handle_func("fail", _fail)
    k.handle_func("callback", _callback)
    return k


#: The WSGI application gunicorn loads (``tests.gunicorn_app:app``).
app = make_math_kite()
