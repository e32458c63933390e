"""Test-wide setup: the whole test process is monkey-patched, like a typical kite app.

(The unpatched, blocking-script mode is tested in subprocesses.)
"""

from gevent import monkey

monkey.patch_all()
