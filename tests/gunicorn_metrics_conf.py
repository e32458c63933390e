"""gunicorn settings for several workers sharing metrics (prometheus_client's multiprocess mode):
the hook that forgets an exited worker's gauges. Used by tests/test_metrics.py; see README "Operations"."""

from kite.metrics import gunicorn_child_exit as child_exit  # noqa: F401 - gunicorn reads this name
