"""The math kite with metrics on, as a gunicorn app for the multiprocess metrics test (tests/test_metrics.py)::

    PROMETHEUS_MULTIPROC_DIR=/tmp/m gunicorn -k kite.server.GeventKiteWorker -w 2 \\
        -c tests/gunicorn_metrics_conf.py tests.gunicorn_metrics_app:app

``pid []`` -> the serving worker's process id, so that a test can tell the workers apart;
``spin [seconds]`` keeps the worker's CPU busy (no greenlet switch) that long: meanwhile the other
worker accepts every new connection.
"""

from __future__ import annotations

import os
import time

from tests.gunicorn_app import make_math_kite

app = make_math_kite()
app.handle_func("pid", lambda r: os.getpid())


def _spin(r):
    deadline = time.perf_counter() + r.args.one().must_float64()
    while time.perf_counter() < deadline:
        pass
    return os.getpid()


app.handle_func("spin", _spin)
app.enable_metrics()
