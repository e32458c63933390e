"""The set-up of ``bench/kontrol_scale.py``: the versions of the code it compares, the storage servers it uses.

* **trees** (:class:`Tree`): "current", a copy of this working tree's packages made at the
  start (:func:`current_tree`), and "baseline", a commit checked out with ``git worktree add
  --detach`` (:func:`baseline_tree`); a process runs on a tree's code after
  :func:`use_tree` (its packages first on ``sys.path``, no other tree's reachable), and
  :func:`foreign_modules` checks that it did;
* **sites** (:class:`Sites`): one etcd (v3 and v2 API) and one PostgreSQL (``tests/kontrol/
  conftest.py``'s ``PostgresServer``) started on first use, and a fresh location per run --
  an sqlite file, an etcd key prefix, a database -- cleared after it;
* **clean-up**: temporary dirs and the worktree go at exit, on errors and on SIGINT /
  SIGTERM / SIGHUP (:func:`install_cleanup`), with the child processes ``common`` stops.

Imported after ``monkey.patch_all()``, like ``common``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import common
from gevent import monkey

ETCD_START_TIMEOUT = 30.0


# --------------------------------------------------------------------------- trees: which code a process runs

#: The packages a Kontrol imports from its tree.
TREE_PACKAGES = ("kite", "kontrol", "kitecli")


def use_tree(tree: Path) -> None:
    """Make ``import kite`` / ``kontrol`` find ``tree``'s packages and no other tree's.

    ``tree`` goes first on ``sys.path``; the working tree (which ``common`` put there) and
    the editable install's finder (which maps ``kite`` to the working tree) are removed.
    """
    loaded = [name for name in TREE_PACKAGES if name in sys.modules]
    if loaded:
        raise RuntimeError(f"{loaded} imported before choosing the tree")
    others = {common.ROOT, tree}
    sys.path[:] = [str(tree), *(p for p in sys.path if p and Path(p).resolve() not in others)]
    sys.meta_path[:] = [f for f in sys.meta_path if not getattr(f, "__module__", "").startswith("__editable__")]


def foreign_modules(tree: Path) -> tuple[int, list[str]]:
    """How many ``kite``/``kontrol`` modules are loaded, and those not loaded from ``tree``."""
    mine = [(name, getattr(m, "__file__", None)) for name, m in list(sys.modules.items())
            if name.split(".")[0] in TREE_PACKAGES]
    return len(mine), sorted(name for name, f in mine if f is None or not Path(f).resolve().is_relative_to(tree))


_cleanups: list[Callable[[], None]] = []


def add_cleanup(fn: Callable[[], None]) -> None:
    """Run ``fn`` at exit and on SIGINT / SIGTERM / SIGHUP (so it must not block on gevent)."""
    _cleanups.append(fn)


def run_cleanups() -> None:
    """Every cleanup, newest first, once."""
    while _cleanups:
        try:
            _cleanups.pop()()
        except Exception as e:
            print(f"cleanup failed: {e!r}", file=sys.stderr)


def _cleanup_then(previous: Any, signum: int, frame: Any) -> None:
    common.terminate_all()
    run_cleanups()
    if callable(previous):
        previous(signum, frame)


def run_plain(cmd: Sequence[str]) -> int:
    """Run ``cmd`` to its end without gevent's hub (a signal handler may run in it); its exit status."""
    waitpid = monkey.get_original("os", "waitpid")
    devnull = [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    pid = os.posix_spawnp(cmd[0], list(cmd), os.environ, file_actions=devnull)
    return os.waitstatus_to_exitcode(waitpid(pid, 0)[1])


def git(*args: str) -> str:
    """``git -C ROOT ARGS``' output (read-only commands, and ``worktree add``)."""
    return subprocess.run(["git", "-C", str(common.ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=120).stdout.strip()


@dataclass
class Tree:
    """One version of the code: ``current`` (a copy of this working tree's packages) or ``baseline`` (a worktree);
    ``workers``: how many Kontrol processes serve its port (``workers``, the all-cores rows: today's code, N > 1)."""

    name: str
    label: str
    path: Path
    workers: int = 1

    def command(self, script: str, *args: str) -> tuple[list[str], dict[str, str]]:
        """``script ARGS --tree PATH`` on this tree's packages: the command line and its environment."""
        return [sys.executable, script, *args, "--tree", str(self.path)], {**os.environ, "PYTHONPATH": str(self.path)}


def temp_dir(prefix: str, where: str | None = None) -> Path:
    """A new temporary directory (in ``where``, default the system's), removed at exit and on signals."""
    d = Path(tempfile.mkdtemp(prefix=prefix, dir=where))
    add_cleanup(functools.partial(shutil.rmtree, d, ignore_errors=True))
    return d


def current_tree() -> Tree:
    """This working tree's packages as they are now, copied: edits made while the bench runs do not
    reach later rounds (every Kontrol and client of "current" imports the copy)."""
    dirty = git("status", "--porcelain", "--untracked-files=no")
    label = git("rev-parse", "--short", "HEAD") + (" + uncommitted changes" if dirty else "")
    path = temp_dir("kontrol-current-") / "tree"
    for package in TREE_PACKAGES:
        shutil.copytree(common.ROOT / package, path / package, ignore=shutil.ignore_patterns("__pycache__"))
    return Tree("current", f"{label}, working tree copied at {time.strftime('%H:%M:%S')}", path)


def baseline_tree(ref: str) -> Tree:
    """``ref`` checked out (detached) in a temporary worktree, removed at exit and on Ctrl-C."""
    sha = git("rev-parse", "--verify", f"{ref}^{{commit}}")
    path = temp_dir("kontrol-baseline-") / "tree"
    add_cleanup(lambda: run_plain(["git", "-C", str(common.ROOT), "worktree", "remove", "--force", str(path)]))
    git("worktree", "add", "--detach", str(path), sha)
    return Tree("baseline", git("rev-parse", "--short", sha), path)


def scratch_dir() -> Path:
    """A temporary dir on tmpfs if there is one (etcd fsyncs every write), removed at exit."""
    return temp_dir("kontrol-scale-", "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK)
                    else None)


def install_cleanup() -> None:
    """Children stopped, scratch dirs and the worktree removed: at exit, on errors and on signals."""
    atexit.register(run_cleanups)  # registered first: runs after common's stop_all
    common.install_cleanup()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, functools.partial(_cleanup_then, signal.getsignal(sig)))


# --------------------------------------------------------------------------- storage servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind((common.HOST, 0))
        return s.getsockname()[1]


@functools.lru_cache(maxsize=1)
def common_cpus() -> set[int]:
    """Every CPU this process could run on before pinning."""
    return set(os.sched_getaffinity(0))


def unpin(pid: int) -> None:
    """Give process ``pid`` and its children every CPU back (children forked later inherit it)."""
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    for p in (pid, *map(int, children)):
        try:
            os.sched_setaffinity(p, common_cpus())
        except OSError:
            pass


def etcd_binary() -> str | None:
    return shutil.which("etcd") or ("/usr/bin/etcd" if os.access("/usr/bin/etcd", os.X_OK) else None)


class Etcd:
    """A single-node etcd on free 127.0.0.1 ports (v2 API enabled) with a temporary data dir."""

    def __init__(self, scratch: Path, unpin_it: bool):
        self.client_port, self.peer_port = free_port(), free_port()
        self.url = f"http://{common.HOST}:{self.client_port}"
        self.log_path = scratch / "etcd.log"
        peer = f"http://{common.HOST}:{self.peer_port}"
        cmd = [etcd_binary() or "etcd", "--name=kontrol-bench", f"--data-dir={scratch / 'etcd-data'}",
               f"--listen-client-urls={self.url}", f"--advertise-client-urls={self.url}",
               f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
               f"--initial-cluster=kontrol-bench={peer}", "--enable-v2=true", "--logger=zap", "--log-level=warn"]
        taskset = shutil.which("taskset")
        if unpin_it and taskset:  # spawned as a server (pinned); etcd gets every CPU back
            cmd = [taskset, "-c", ",".join(map(str, sorted(common_cpus()))), *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = common.spawn(cmd, role="server", stdin=subprocess.DEVNULL, stdout=log,
                                     stderr=subprocess.STDOUT)
        from tests.etcd_health import wait_until_healthy

        failure = wait_until_healthy(self.url, self.proc, ETCD_START_TIMEOUT)
        if failure is not None:
            self.stop()
            raise RuntimeError(f"{failure}: {self.log_tail()}")

    def log_tail(self, size: int = 800) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        common.stop(self.proc)


def etcd_version() -> str:
    try:
        out = subprocess.run([etcd_binary() or "etcd", "--version"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return "?"
    return out.split("\n", 1)[0].replace("etcd Version: ", "")


def postgres_unsupported() -> str:
    """Why this tree cannot bench postgres ("" if it can): its ``open_storage`` must take a
    ``postgres://`` URL (tried on a closed port: the backend opens, logging a warning)."""
    from kontrol.storage import open_storage

    logging.getLogger("kontrol").setLevel(logging.ERROR)
    try:
        open_storage(f"postgres://bench@{common.HOST}:9/bench").close()
    except ValueError as e:
        return f"this tree has no postgres backend ({e})"
    except Exception:
        pass  # it knows the scheme
    return ""


class Postgres:
    """A throwaway PostgreSQL: ``tests/kontrol/conftest.py``'s ``PostgresServer`` (initdb into
    ``scratch``, fsync off, a non-superuser role owning one fresh database per run)."""

    def __init__(self, scratch: Path, unpin_it: bool):
        import pytest

        from tests.kontrol.conftest import PostgresServer

        server = None
        try:
            server = PostgresServer(scratch)  # finds the binaries
            server.init()
            server.start()
            common.adopt(server.process)  # stopped on exit and Ctrl-C like the other children
            server.create_user()
        except pytest.fail.Exception as e:  # a missing binary or a failed start fails a test there
            if server is not None:
                server.stop()
            raise RuntimeError(str(e)) from None
        self.server = server
        if unpin_it:
            unpin(server.process.pid)
        self.version = server.bindir.parent.name

    def create(self) -> str:
        """A fresh database: its storage URL."""
        return self.server.url(self.server.create_database())

    def drop(self, url: str) -> None:
        self.server.drop_database(url.rsplit("/", 1)[1])

    def stop(self) -> None:
        self.server.stop()


class Sites:
    """The storage servers the runs share -- one etcd for etcd and etcd2, one PostgreSQL --
    started on first use; every run gets a fresh location on them (a fresh etcd, a fresh
    database) and clears it afterwards."""

    def __init__(self, scratch: Path, unpin_it: bool):
        self.scratch, self.unpin = scratch, unpin_it
        self.etcd: Etcd | None = None
        self._etcd_dir = scratch
        self._etcd_runs = 0
        self.postgres: Postgres | None = None

    def unavailable(self, kind: str) -> str:
        """Why ``kind`` cannot be benched here ("" if it can)."""
        if kind in ("etcd", "etcd2") and not etcd_binary():
            return "etcd is not installed (apt-get install etcd-server, or `make deps`)"
        if kind == "postgres":
            return postgres_unsupported()
        return ""

    def start(self, kind: str) -> None:
        """Start the server ``kind`` needs (RuntimeError if it cannot)."""
        if kind in ("etcd", "etcd2") and self.etcd is None:
            self._fresh_etcd()
        if kind == "postgres" and self.postgres is None:
            os.chmod(self.scratch, 0o711)  # PostgreSQL runs as its own user (we may be root)
            self.postgres = Postgres(self._dir("postgres"), self.unpin)

    def _fresh_etcd(self) -> None:
        """Stop etcd (if running) and start an empty one, in a new data dir."""
        if self.etcd is not None:
            self.etcd.stop()
            shutil.rmtree(self._etcd_dir, ignore_errors=True)
            self.etcd = None
        self._etcd_runs += 1
        self._etcd_dir = self._dir(f"etcd-{self._etcd_runs}")
        self.etcd = Etcd(self._etcd_dir, self.unpin)

    def _dir(self, name: str) -> Path:
        d = self.scratch / name
        d.mkdir()
        return d

    def open(self, kind: str, run: str) -> str:
        """A fresh location for run ``run``: its storage URL (or sqlite path)."""
        if kind == "sqlite":
            return str(self._dir(f"sqlite-{run}") / "kontrol.db")
        if kind == "postgres":
            return self.postgres.create()
        scheme, prefix = ("etcd", "kb") if kind == "etcd" else ("etcd2", "kb2")
        return f"{scheme}://{common.HOST}:{self.etcd.client_port}/{prefix}-{run}"

    def clear(self, kind: str, run: str, location: str) -> None:
        """Remove what run ``run`` left at ``location``."""
        if kind == "sqlite":
            shutil.rmtree(self.scratch / f"sqlite-{run}", ignore_errors=True)
        elif kind == "postgres":
            self.postgres.drop(location)
        else:
            # A fresh etcd for the next run: deleting the run's keys would leave its leases (v3) or TTL keys
            # (v2) expiring, which costs etcd a good part of a core for minutes, in the next runs.
            self._fresh_etcd()

    def stop(self) -> None:
        for server in (self.postgres, self.etcd):
            if server is not None:
                server.stop()
        self.etcd = self.postgres = None
