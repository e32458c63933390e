"""A kite served by gunicorn with kite's gevent worker (``gunicorn.conf.py`` + ``app.py``)."""
