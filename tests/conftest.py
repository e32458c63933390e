"""Test-wide setup: the whole test process is monkey-patched, like a typical kite app.

(The unpatched, blocking-script mode is tested in subprocesses.)
"""

from gevent import monkey

monkey.patch_all()

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _isolated_kite_home(tmp_path_factory, monkeypatch):
    """Kites built in tests never read the developer's real ~/.kite/kite.key."""
    monkeypatch.setenv("KITE_HOME", str(tmp_path_factory.mktemp("kite_home")))
