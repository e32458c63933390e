"""Test-wide setup: the whole test process is monkey-patched, like a typical kite app.

(The unpatched, blocking-script mode is tested in subprocesses.)
"""

from gevent import monkey

monkey.patch_all()

import socket  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def kite_home(tmp_path_factory, monkeypatch):
    """Kites built in tests never read the developer's real ~/.kite/kite.key: KITE_HOME is an
    empty folder of the test's own, returned for tests that put a kite.key there."""
    home = tmp_path_factory.mktemp("kite_home")
    monkeypatch.setenv("KITE_HOME", str(home))
    return home


@pytest.fixture
def dead_port():
    """A port of 127.0.0.1 where nothing listens, for the whole test: bound, never listening, so a
    connection is refused and no other test process (the suite runs three at once) can take it --
    a port merely found free and released can be listening again, with a kite on it, a moment later."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield held.getsockname()[1]
