"""Fixtures for the storage tests: real etcd and PostgreSQL servers, and every backend behind one fixture.

* :class:`EtcdServer` runs the real ``etcd`` binary (Debian's ``etcd-server``, which
  ``make deps`` installs) on free 127.0.0.1 ports with the v2 API enabled and a
  temporary data dir; ``stop()``/``start()`` restart it on the same ports and data.
  A missing binary FAILS the tests (they are not skipped): a green run must mean
  etcd was really exercised.
* ``etcd_server``: one server per test module.
* :class:`PostgresServer` runs Debian's PostgreSQL (``make deps`` installs it) from a
  fresh ``initdb`` in a temporary dir, on a free 127.0.0.1 port, as an unprivileged user
  when the tests run as root; ``postgres_server``: one per test session, a fresh
  database per test (:meth:`PostgresServer.create_database`). Missing binaries FAIL.
* ``backend`` / ``storage``: parametrized over memory, sqlite, etcd (v3), etcd2 and
  postgres; each test gets a fresh location (a new sqlite file, a new etcd key prefix, a
  new postgres database), and ``backend.open()`` opens further instances on the same
  location. Postgres keeps the Go schema, whose ids are ``uuid`` columns and whose
  ``kite.key_id`` must name a stored key pair, so the shared tests use what Kontrol itself
  uses on every backend: UUID kite and key pair ids, and kites registered under the id of
  a stored pair (``key_id`` / ``key_ids``, :func:`add_key_pairs`).
* ``kontrol``: the Kontrol kite serving on a fresh ``backend`` location
  (:func:`start_kontrol`), and :func:`make_kite`, a kite holding a kite key from it.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import gevent
import pg8000.native
import pytest

from kite import Config, Kite
from kontrol import Kontrol
from kontrol.storage import KiteEvent, Storage, open_storage
from tests.etcd_health import wait_until_healthy
from tests.serving import serve_kite

#: Seconds etcd may take to become healthy (it takes ~1 s on an idle machine).
ETCD_START_TIMEOUT = 30.0
#: Raft timings for the test server. Short timings elect a leader fast and lower
#: etcd's minimum lease TTL (1.5 election timeouts) to 1 s, so TTL tests stay short.
ETCD_HEARTBEAT_MS = 50
ETCD_ELECTION_MS = 500
#: Default wait for an asynchronous outcome (an event, an expiry) in tests.
WAIT_TIMEOUT = 10.0

BACKENDS = ("memory", "sqlite", "etcd", "etcd2", "postgres")


def etcd_binary() -> str:
    """The ``etcd`` executable; fails the test (not skip) when it is missing."""
    path = shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)
    if path is None:
        pytest.fail(
            "etcd is not installed: the storage tests need a real etcd; run `make deps` "
            "(or `apt-get install etcd-server`)",
            pytrace=False,
        )
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class EtcdServer:
    """A single-node etcd on 127.0.0.1 (v2 API enabled), restartable on the same ports and data."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.client_port = free_port()
        self.peer_port = free_port()
        self.url = f"http://127.0.0.1:{self.client_port}"
        self.log_path = data_dir.parent / f"{data_dir.name}.log"
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        peer = f"http://127.0.0.1:{self.peer_port}"
        args = [
            etcd_binary(),
            "--name=kontrol-test",
            f"--data-dir={self.data_dir}",
            f"--listen-client-urls={self.url}",
            f"--advertise-client-urls={self.url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=kontrol-test={peer}",
            "--enable-v2=true",
            f"--heartbeat-interval={ETCD_HEARTBEAT_MS}",
            f"--election-timeout={ETCD_ELECTION_MS}",
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        failure = wait_until_healthy(self.url, self.process, ETCD_START_TIMEOUT)
        if failure is not None:
            self.stop()
            pytest.fail(f"{failure}:\n{self.log_tail()}", pytrace=False)

    def stop(self) -> None:
        """Kill etcd (as a crash would); its data dir stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=10)
        self.process = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _scratch_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # etcd fsyncs every write; on tmpfs that costs nothing, which keeps the suite fast.
    if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK):
        return Path(tempfile.mkdtemp(prefix="kontrol-etcd-", dir="/dev/shm"))
    return tmp_path_factory.mktemp("etcd")


@pytest.fixture(scope="module")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdServer]:
    """A running etcd for the whole test module; always killed afterwards."""
    scratch = _scratch_dir(tmp_path_factory)
    server = EtcdServer(scratch / "data")
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


#: Seconds PostgreSQL may take to accept connections after starting.
POSTGRES_START_TIMEOUT = 30.0
#: The role the storage under test logs in as (owner of each test database, not a superuser).
POSTGRES_USER, POSTGRES_PASSWORD = "kontrol", "kontrol-test-password"
POSTGRES_SUPERUSER, POSTGRES_SUPERUSER_PASSWORD = "postgres", "postgres-test-password"


def postgres_bindir() -> Path:
    """The directory of ``initdb`` and ``postgres``; fails the test (not skip) when PostgreSQL is missing."""
    candidates = []
    if shutil.which("pg_config"):
        found = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, timeout=30).stdout.strip()
        candidates.append(found)
    # Debian's packages, newest major version first.
    candidates += sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name), reverse=True)
    for candidate in candidates:
        if candidate and all(os.access(Path(candidate) / b, os.X_OK) for b in ("initdb", "postgres")):
            return Path(candidate)
    pytest.fail(
        "PostgreSQL is not installed: the postgres storage tests need a real server; run `make deps` "
        "(or `apt-get install postgresql`)",
        pytrace=False,
    )


def _server_user() -> pwd.struct_passwd | None:
    """Who runs PostgreSQL: None (ourselves) unless we are root, which initdb and postgres refuse."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):  # Debian's package creates "postgres"
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    pytest.fail("running as root with neither a 'postgres' nor a 'nobody' user to run PostgreSQL as", pytrace=False)


class PostgresServer:
    """A throwaway PostgreSQL cluster on 127.0.0.1 (fsync off: test data only), restartable on the same port."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.bindir = postgres_bindir()
        self.data_dir = scratch / "data"
        self.port = free_port()
        self.log_path = scratch / "postgres.log"
        self.process: subprocess.Popen | None = None
        self._user = _server_user()
        self._databases = 0
        self._create_options = ""

    def _as_server_user(self) -> dict:
        """Popen arguments that run the child as the server's user."""
        if self._user is None:
            return {}
        return {"user": self._user.pw_uid, "group": self._user.pw_gid, "extra_groups": []}

    def init(self) -> None:
        """``initdb`` a fresh cluster (superuser password auth over TCP)."""
        if self._user is not None:
            os.chown(self.scratch, self._user.pw_uid, self._user.pw_gid)
        pwfile = self.scratch / "pwfile"
        pwfile.write_text(POSTGRES_SUPERUSER_PASSWORD + "\n")
        if self._user is not None:
            os.chown(pwfile, self._user.pw_uid, self._user.pw_gid)
        args = [
            str(self.bindir / "initdb"),
            f"--pgdata={self.data_dir}",
            f"--username={POSTGRES_SUPERUSER}",
            f"--pwfile={pwfile}",
            "--auth-local=trust",
            "--auth-host=scram-sha-256",
            "--encoding=UTF8",
            "--no-locale",
            "--no-sync",
        ]
        done = subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=self.scratch,
                              **self._as_server_user())
        if done.returncode != 0:
            pytest.fail(f"initdb failed ({done.returncode}):\n{done.stdout}\n{done.stderr}", pytrace=False)

    def start(self) -> None:
        args = [
            str(self.bindir / "postgres"),
            "-D", str(self.data_dir),
            "-p", str(self.port),
            "-k", str(self.scratch),
            "-c", "listen_addresses=127.0.0.1",
            "-c", "fsync=off",
            "-c", "synchronous_commit=off",
            "-c", "full_page_writes=off",
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        try:
            self.process = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=self.scratch,
                                            **self._as_server_user())
        finally:
            log.close()
        deadline = time.monotonic() + POSTGRES_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                pytest.fail(f"postgres exited with {self.process.returncode}:\n{self.log_tail()}", pytrace=False)
            try:
                self.admin().close()
                return
            except Exception:
                gevent.sleep(0.05)
        self.stop()
        pytest.fail(f"postgres did not accept connections in {POSTGRES_START_TIMEOUT} s:\n{self.log_tail()}",
                    pytrace=False)

    def stop(self, mode: signal.Signals = signal.SIGINT) -> None:
        """Shut down: SIGINT is a fast (clean) shutdown, SIGQUIT an immediate one (like a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(mode)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None

    def admin(self, database: str = "postgres") -> pg8000.native.Connection:
        """A superuser connection (close it). Without TLS, which the server does not offer: pg8000's
        default would build an SSL context for each connection, a third of a test's database setup."""
        return pg8000.native.Connection(POSTGRES_SUPERUSER, host="127.0.0.1", port=self.port, database=database,
                                        password=POSTGRES_SUPERUSER_PASSWORD, timeout=10, ssl_context=False)

    def create_user(self) -> None:
        with self.admin() as db:
            db.run(f"CREATE ROLE {POSTGRES_USER} LOGIN PASSWORD '{POSTGRES_PASSWORD}'")
            [[version]] = db.run("SHOW server_version_num")
        # Since PostgreSQL 15, CREATE DATABASE copies the template through the WAL by default; copying
        # its files (what older versions always did) is ~3 times faster for a server without fsync.
        self._create_options = " STRATEGY FILE_COPY" if int(version) >= 150000 else ""

    def create_database(self) -> str:
        """A new, empty database owned by :data:`POSTGRES_USER`; its name."""
        self._databases += 1
        name = f"t{self._databases}_{uuid.uuid4().hex[:8]}"
        with self.admin() as db:
            db.run(f"CREATE DATABASE {name} OWNER {POSTGRES_USER}{self._create_options}")
        return name

    def drop_database(self, name: str) -> None:
        with self.admin() as db:
            db.run(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    def url(self, database: str) -> str:
        return f"postgres://{POSTGRES_USER}:{POSTGRES_PASSWORD}@127.0.0.1:{self.port}/{database}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _postgres_scratch() -> Path:
    """A new dir the server's user can reach: in tmpfs when there is one, else the temp dir (never
    under pytest's, whose parents only root may enter)."""
    shm = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None
    return Path(tempfile.mkdtemp(prefix="kontrol-postgres-", dir=shm))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A running PostgreSQL for the whole session; always stopped afterwards."""
    scratch = _postgres_scratch()
    server = PostgresServer(scratch)
    try:
        server.init()
        server.start()
        server.create_user()
        yield server
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture
def postgres_database(postgres_server: PostgresServer) -> Iterator[str]:
    """A fresh database for one test (dropped afterwards): its storage URL."""
    name = postgres_server.create_database()
    try:
        yield postgres_server.url(name)
    finally:
        postgres_server.drop_database(name)


class Backend:
    """One storage location of one kind; ``open()`` gives another instance on it."""

    def __init__(self, kind: str, location: str) -> None:
        self.kind = kind
        self.location = location
        self._opened: list[Storage] = []

    @property
    def shared(self) -> bool:
        """Whether separate instances see each other's writes and watch events (etcd, postgres)."""
        return self.kind in ("etcd", "etcd2", "postgres")

    def open(self, **options) -> Storage:
        storage = open_storage(self.location, **options)
        self._opened.append(storage)
        return storage

    def close_all(self) -> None:
        for storage in self._opened:
            storage.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind = request.param
    if kind == "memory":
        location = "memory"
    elif kind == "sqlite":
        location = str(tmp_path / "kontrol.db")
    elif kind == "postgres":
        location = request.getfixturevalue("postgres_database")  # a fresh database per test
    else:
        server: EtcdServer = request.getfixturevalue("etcd_server")
        # A fresh key prefix per test: tests share the module's etcd without seeing each other.
        location = f"{kind}://127.0.0.1:{server.client_port}/t-{uuid.uuid4().hex[:12]}"
    b = Backend(kind, location)
    try:
        yield b
    finally:
        b.close_all()


@pytest.fixture
def storage(backend: Backend) -> Storage:
    return backend.open()


def add_key_pairs(storage: Storage, count: int = 1) -> list[str]:
    """Store ``count`` new key pairs (distinct PEM-looking strings: storages do not parse them) in
    ``storage``; their ids (UUIDs), to register kites under, as Kontrol does."""
    ids = []
    for _ in range(count):
        tag = uuid.uuid4().hex
        public = f"-----BEGIN PUBLIC KEY-----\n{tag}\n-----END PUBLIC KEY-----"
        private = f"-----BEGIN PRIVATE KEY-----\n{tag}\n-----END PRIVATE KEY-----"
        ids.append(storage.add_key_pair("", public, private).id)
    return ids


@pytest.fixture
def key_ids(storage: Storage) -> list[str]:
    """The ids of two key pairs stored in the test's ``storage``."""
    return add_key_pairs(storage, 2)


@pytest.fixture
def key_id(key_ids: list[str]) -> str:
    """The id of a key pair stored in the test's ``storage``."""
    return key_ids[0]


#: Kontrol timings short enough for the tests (seconds).
FAST = {"heartbeat_interval": 1.0, "heartbeat_delay": 1.0, "update_interval": 1.0, "key_ttl": 3.0}


def start_kontrol(storage: Storage, **options) -> Kontrol:
    """Kontrol of user ``koding`` on ``storage``, serving on 127.0.0.1 with the :data:`FAST` timings
    (``options`` override them)."""
    config = Config()
    config.username, config.ip, config.port = "koding", "127.0.0.1", 0
    kontrol = Kontrol(config, storage, **{**FAST, **options})
    gevent.spawn(kontrol.run)
    assert kontrol.kite.server_ready_notify().wait(5)
    return kontrol


@pytest.fixture
def kontrol(backend: Backend) -> Iterator[Kontrol]:
    k = start_kontrol(backend.open())
    yield k
    k.close()


def make_kite(kontrol: Kontrol, username: str, name: str = "math", serve: bool = True) -> Kite:
    """A kite of ``username`` configured the way a kite.key from ``kontrol`` configures it (holding a kite
    key from it and trusting its key), with a ``square`` method; served unless ``serve`` is false."""
    k = Kite(name, "1.0.0")
    c = k.config
    c.username, c.environment, c.region, c.ip, c.port = username, "prod", "eu", "127.0.0.1", 0
    c.kite_key = kontrol.register_user(username)
    c.kontrol_key = kontrol.keypairs.current().public
    c.kontrol_user, c.kontrol_url = kontrol.username, kontrol.kite.url
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    return serve_kite(k) if serve else k


class Recorder:
    """A watch callback that records events and can wait for them."""

    def __init__(self) -> None:
        self.events: list[KiteEvent] = []

    def __call__(self, event: KiteEvent) -> None:
        self.events.append(event)

    def actions(self) -> list[tuple[str, str]]:
        """``(action, kite id)`` per event so far."""
        return [(e.action, e.kite.id) for e in self.events]

    def wait_for(self, predicate: Callable[[list[KiteEvent]], bool], timeout: float = WAIT_TIMEOUT) -> None:
        wait_until(lambda: predicate(self.events), timeout, lambda: f"events so far: {self.actions()}")


def wait_until(
    condition: Callable[[], bool], timeout: float = WAIT_TIMEOUT, describe: Callable[[], str] = lambda: ""
) -> None:
    """Poll ``condition`` (yielding to other greenlets) until it holds; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout} s. {describe()}")
        gevent.sleep(0.05)
