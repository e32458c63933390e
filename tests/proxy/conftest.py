"""Fixtures for the proxy tests: a real Kontrol, proxies and kites on 127.0.0.1.

* ``kontrol``: Kontrol of user ``koding`` on memory storage, in this process
  (:func:`tests.kontrol.conftest.start_kontrol`).
* ``proxies``: a factory of in-process :class:`~kite.proxy.reverse.ReverseProxy` kites
  (user ``koding``, environment ``prod``), registered with ``kontrol``; all closed afterwards.
  ``tunnel_proxies`` does the same for :class:`~kite.proxy.tunnel.TunnelProxy` kites.
* ``kites``: a factory of kites of a user holding a kite key from ``kontrol`` (backends carry
  :func:`tests.proxy.methods.add_methods`' methods, callers an ``answer`` method); all closed.
* :class:`~tests.processes.Proc` (a subprocess whose output is collected line by line) for
  :func:`proxy_process` (``python -m kite.proxy.reverse``), :func:`tunnel_process`
  (``python -m kite.proxy.tunnel``) and :func:`backend_process` (``python -m tests.proxy.backend_kite``)
  run with a ``$KITE_HOME`` of their own holding a kite.key from ``kontrol``. Every process is stopped in a ``finally``.

Every wait is on a condition with a timeout (:func:`tests.kontrol.conftest.wait_until`).
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import gevent
import pytest

from kite import Client, Config, Kite, KiteError, kitekey
from kite.proxy.reverse import ReverseProxy
from kite.proxy.tunnel import TunnelProxy
from kontrol import Kontrol
from kontrol.storage import open_storage
from tests.kontrol.conftest import free_port, make_kite, start_kontrol, wait_until
from tests.processes import Proc
from tests.proxy.methods import add_methods

ROOT = Path(__file__).resolve().parent.parent.parent
USER = "alice"
ENVIRONMENT = "prod"
REGION = "eu"
#: Retry interval of the kites' proxy and Kontrol registration loops in the tests (Go: 10 s).
RETRY = 0.2


@pytest.fixture
def kontrol() -> Iterator[Kontrol]:
    k = start_kontrol(open_storage("memory"))
    try:
        yield k
    finally:
        k.close()


def kite_config(kontrol: Kontrol, username: str) -> Config:
    """A config as a kite.key of ``username`` from ``kontrol`` makes it, on 127.0.0.1:0, environment ``prod``."""
    c = Config()
    c.username, c.environment, c.region, c.ip, c.port = username, ENVIRONMENT, REGION, "127.0.0.1", 0
    c.kite_key = kontrol.register_user(username)
    c.kontrol_key = kontrol.keypairs.current().public
    c.kontrol_user, c.kontrol_url = kontrol.username, kontrol.kite.url
    return c


P = TypeVar("P", ReverseProxy, TunnelProxy)


def _serving(proxy: P) -> P:
    """``proxy`` (Kontrol retries fast) serving in a greenlet, once it listens."""
    proxy.kontrol.retry_interval = RETRY
    gevent.spawn(proxy.run)
    assert proxy.server_ready_notify().wait(5)
    return proxy


def start_proxy(kontrol: Kontrol, port: int = 0, **options) -> ReverseProxy:
    """A reverse proxy of Kontrol's own user, serving on 127.0.0.1:``port`` (0: any) in a greenlet."""
    config = kite_config(kontrol, kontrol.username)
    config.port = port
    return _serving(ReverseProxy(config, public_host="127.0.0.1", **options))


def start_tunnel_proxy(kontrol: Kontrol, port: int = 0, **options) -> TunnelProxy:
    """A tunnel proxy of Kontrol's own user on 127.0.0.1:``port`` (0: a free one), serving in a greenlet."""
    config = kite_config(kontrol, kontrol.username)
    config.port = port or free_port()
    return _serving(TunnelProxy(config, public_host=f"127.0.0.1:{config.port}", **options))


def _factory(start: Callable[..., P]) -> Iterator[Callable[..., P]]:
    """A fixture body: ``make(port=0, **options)`` starts a proxy; every one is closed afterwards."""
    made: list[P] = []

    def make(port: int = 0, **options) -> P:
        made.append(start(port, **options))
        return made[-1]

    try:
        yield make
    finally:
        for p in made:
            p.close()


@pytest.fixture
def proxies(kontrol: Kontrol) -> Iterator[Callable[..., ReverseProxy]]:
    yield from _factory(lambda port, **options: start_proxy(kontrol, port, **options))


@pytest.fixture
def proxy(proxies) -> ReverseProxy:
    return proxies()


@pytest.fixture
def tunnel_proxies(kontrol: Kontrol) -> Iterator[Callable[..., TunnelProxy]]:
    yield from _factory(lambda port, **options: start_tunnel_proxy(kontrol, port, **options))


@pytest.fixture
def tunnel_proxy(tunnel_proxies) -> TunnelProxy:
    return tunnel_proxies()


@pytest.fixture
def kites(kontrol: Kontrol) -> Iterator[Callable[..., Kite]]:
    """``kites(username="alice", name="math", serve=True)``: a backend (served) or a caller (``serve=False``)."""
    made: list[Kite] = []

    def make(username: str = USER, name: str = "math", serve: bool = True) -> Kite:
        k = make_kite(kontrol, username, name, serve=False)
        k.kontrol.proxy_retry_interval = k.kontrol.retry_interval = RETRY
        k.config.timeout = 5.0
        if serve:
            add_methods(k)
            gevent.spawn(k.run)
            assert k.server_ready_notify().wait(5)
        else:
            k.handle_func("answer", lambda r: r.args.one().must_float64() * 7)
        made.append(k)
        return k

    try:
        yield make
    finally:
        for k in made:
            k.close()


def find_through(caller: Kite, prefix: str, name: str = "math", username: str = USER,
                 timeout: float = 10.0) -> Client:
    """The (undialed, token) client ``getKites`` returns for ``name`` once its URL starts with ``prefix``."""
    found: list[Client] = []

    def listed() -> bool:
        try:
            clients = caller.get_kites(username=username, environment=ENVIRONMENT, name=name)
        except KiteError:
            return False
        found[:] = [c for c in clients if c.url.startswith(prefix)]
        return bool(found)

    wait_until(listed, timeout, lambda: f"no {name} kite at {prefix}* in Kontrol")
    return found[0]


def listed_urls(caller: Kite, name: str = "math", username: str = USER) -> list[str]:
    """The URLs Kontrol lists for ``name`` now (``[]`` when none)."""
    try:
        return [c.url for c in caller.get_kites(username=username, environment=ENVIRONMENT, name=name)]
    except KiteError:
        return []


def dial(caller: Kite, url: str, found: Client, transport: str = "websocket") -> Client:
    """A client of ``url`` with ``found``'s credentials (the Kontrol token), dialed."""
    client = caller.new_client(url, transport=transport)
    client.auth = found.auth
    client.dial_timeout(5)
    return client


def raw_websocket_url(url: str) -> str:
    """The raw WebSocket URL of a public URL: ``ws://…/proxy/<id>/websocket`` (reverse proxy) or
    ``ws://…/proxy/websocket?kiteID=<id>`` (tunnel proxy: the query stays after the path)."""
    base, sep, query = url.partition("?")
    return base.replace("http://", "ws://", 1).rstrip("/") + "/websocket" + sep + query


# -- subprocesses ----------------------------------------------------------------------------


def kite_home(tmp_path: Path, kontrol: Kontrol, username: str) -> Path:
    """A fresh ``$KITE_HOME`` holding a kite.key of ``username`` from ``kontrol``."""
    home = tmp_path / f"home-{username}-{os.urandom(3).hex()}"
    kitekey.write(kontrol.register_user(username), str(home / "kite.key"))
    return home


def process_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KITE_")}
    return {**env, "KITE_HOME": str(home), "PYTHONUNBUFFERED": "1", **extra}


@contextlib.contextmanager
def _proxy_command(module: str, env: dict[str, str], port: int, args: list[str],
                   wait: bool) -> Iterator[tuple[Proc, int]]:
    """``python -m <module> --ip 127.0.0.1 --port <port> <args>``: the process and its port, once it says
    Kontrol registered it (unless ``wait`` is false); stopped afterwards."""
    proc = Proc([sys.executable, "-m", module, "--ip", "127.0.0.1", "--port", str(port), *args], env)
    try:
        if wait:
            proc.wait_for(lambda line: "Registered to kontrol with URL" in line, "its registration")
        yield proc, port
    finally:
        proc.stop()


def proxy_process(tmp_path: Path, kontrol: Kontrol, port: int | None = None, *args: str,
                  wait: bool = True) -> contextlib.AbstractContextManager[tuple[Proc, int]]:
    """``python -m kite.proxy.reverse`` on 127.0.0.1:``port`` (default: a free one); yields it and the port,
    once it says Kontrol registered it (unless ``wait`` is false)."""
    port = port or free_port()
    env = process_env(kite_home(tmp_path, kontrol, kontrol.username))
    return _proxy_command("kite.proxy.reverse", env, port, ["--region", REGION, "--env", ENVIRONMENT, *args], wait)


def tunnel_process(tmp_path: Path, kontrol: Kontrol, port: int | None = None, *args: str,
                   wait: bool = True) -> contextlib.AbstractContextManager[tuple[Proc, int]]:
    """``python -m kite.proxy.tunnel`` on 127.0.0.1:``port`` (default: a free one), public host
    ``127.0.0.1:<port>``; yields it and the port once Kontrol registered it (unless ``wait`` is false)."""
    port = port or free_port()
    env = process_env(kite_home(tmp_path, kontrol, kontrol.username), KITE_ENVIRONMENT=ENVIRONMENT,
                      KITE_REGION=REGION)
    return _proxy_command("kite.proxy.tunnel", env, port, ["--public-host", f"127.0.0.1:{port}", *args], wait)


@contextlib.contextmanager
def backend_process(tmp_path: Path, kontrol: Kontrol, *args: str, **extra_env: str) -> Iterator[tuple[Proc, str]]:
    """``python -m tests.proxy.backend_kite`` of ``alice`` (``args``: e.g. ``--tunnel``); yields it and its
    kite id once it serves."""
    env = process_env(kite_home(tmp_path, kontrol, USER), KITE_ENVIRONMENT=ENVIRONMENT, KITE_REGION=REGION,
                      KITE_IP="127.0.0.1", KITE_PORT="0", **extra_env)
    proc = Proc([sys.executable, "-m", "tests.proxy.backend_kite", "--retry", str(RETRY), *args], env)
    try:
        ready = proc.wait_for(lambda line: line.startswith("READY "), "READY")
        yield proc, ready.split()[1]
    finally:
        proc.stop()
