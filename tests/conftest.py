"""Test-wide setup: the whole test process is monkey-patched, like a typical kite app.

(The unpatched, blocking-script mode is tested in subprocesses.)
"""

from gevent import monkey

monkey.patch_all()

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def kite_home(tmp_path_factory, monkeypatch):
    """Kites built in tests never read the developer's real ~/.kite/kite.key: KITE_HOME is an
    empty folder of the test's own, returned for tests that put a kite.key there."""
    home = tmp_path_factory.mktemp("kite_home")
    monkeypatch.setenv("KITE_HOME", str(home))
    return home
