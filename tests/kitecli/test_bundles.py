"""``kitecli install | list | run | uninstall``: the real command (``python -m kitecli``) in subprocesses.

The bundle is a tiny setuptools project made in a temporary directory: distribution ``mathbundle``
with two ``kite.kites`` entry points, ``math`` (a kite serving ``square`` on ``--port``, like
examples/math/server.py) and ``echo`` (prints its argv, its ``sys.prefix`` and where ``kite`` came
from, and exits 3). It is installed once per module (``installed_home``, the slow part: a venv
and a pip install); tests that change the kite home work on a copy of it (``home``): a bundle
venv is run by its python's path, so a copied one works.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from kite import Kite, kitekey
from kitecli import bundles, bundlestore

ROOT = Path(__file__).resolve().parents[2]
#: Seconds one kitecli run may take (an install is a venv and a pip install: ~4 s).
RUN_TIMEOUT = 120
#: Seconds the bundle's kite may take to listen.
SERVE_TIMEOUT = 20

MODULE = '''\
"""A kite bundle for the tests."""

import json
import sys


def main():
    """The math kite (as examples/math/server.py): ``square`` on 127.0.0.1:--port."""
    from gevent import monkey

    monkey.patch_all()
    import argparse

    from kite import Kite

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    k = Kite("math", "1.0.0")
    k.config.disable_authentication = True
    k.config.ip, k.config.port = "127.0.0.1", args.port
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.run()


def echo():
    import kite

    print("ECHO " + json.dumps({"argv": sys.argv, "prefix": sys.prefix, "kite": kite.__file__}))
    return 3
'''


def make_project(path: Path, version: str = "1.0", entry_points: bool = True) -> Path:
    """The ``mathbundle`` project at ``path`` (setuptools backend)."""
    path.mkdir(parents=True)
    eps = '[project.entry-points."kite.kites"]\nmath = "mathbundle:main"\necho = "mathbundle:echo"\n'
    (path / "pyproject.toml").write_text(textwrap.dedent(f"""\
        [build-system]
        requires = ["setuptools>=61"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "mathbundle"
        version = "{version}"
        dependencies = ["kite"]

        [tool.setuptools]
        py-modules = ["mathbundle"]

        """) + (eps if entry_points else ""))
    (path / "mathbundle.py").write_text(MODULE)
    return path


@dataclass
class Result:
    code: int
    out: str
    err: str


def kitecli(home: Path, *args: str, cwd: Path = ROOT) -> Result:
    """``python -m kitecli ARGS…`` with ``KITE_HOME=home``; a traceback on stderr fails the test."""
    proc = subprocess.run([sys.executable, "-m", "kitecli", *args], cwd=cwd, env=env_for(home),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)


def env_for(home: Path) -> dict[str, str]:
    return {**os.environ, "KITE_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def entries(home: Path) -> set[str]:
    """Everything under ``home/kites`` (relative paths, two levels deep)."""
    kites = home / "kites"
    return {str(p.relative_to(kites)) for p in [*kites.glob("*"), *kites.glob("*/*")]} if kites.exists() else set()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_project(tmp_path_factory.mktemp("src") / "mathbundle")


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory, project: Path) -> tuple[Path, Result]:
    """A kite home with mathbundle 1.0 installed (``math`` and ``echo``), and the install's result."""
    home = tmp_path_factory.mktemp("installed_home")
    return home, kitecli(home, "install", str(project))


@pytest.fixture(scope="module")
def installed_home(installed: tuple[Path, Result]) -> Path:
    home, result = installed
    assert result.code == 0, result.err
    return home


@pytest.fixture
def home(installed_home: Path, tmp_path: Path) -> Path:
    """This test's own copy of ``installed_home``."""
    copy = tmp_path / "home"
    shutil.copytree(installed_home, copy, symlinks=True)
    return copy


# -- install, list ----------------------------------------------------------------------------------------


def test_install_puts_each_entry_point_in_a_venv_of_its_own(installed: tuple[Path, Result], project: Path) -> None:
    home, result = installed
    assert result.code == 0, result.err
    kites = home / "kites"
    assert result.out.splitlines() == [f"installed echo/1.0 (mathbundle:echo) in {kites / 'echo' / '1.0'}",
                                       f"installed math/1.0 (mathbundle:main) in {kites / 'math' / '1.0'}"]
    assert entries(home) == {"echo", "echo/1.0", "math", "math/1.0"}  # no staging directory left
    meta = json.loads((kites / "math" / "1.0" / "kite-bundle.json").read_text())
    assert meta | {"installed": "?"} == {"name": "math", "version": "1.0", "entry_point": "mathbundle:main",
                                         "distribution": "mathbundle", "source": str(project), "installed": "?"}
    for name in ("echo", "math"):
        venv = kites / name / "1.0"
        assert (venv / "bin" / "python").exists()
        assert str(venv) in (venv / "pyvenv.cfg").read_text()  # relocated from the staging directory
        assert ".tmp-" not in (venv / "bin" / "activate").read_text()


def test_list_prints_an_aligned_table(installed_home: Path) -> None:
    result = kitecli(installed_home, "list")
    kites = installed_home / "kites"
    assert (result.code, result.err) == (0, "")
    assert result.out.splitlines() == [
        "NAME  VERSION  ENTRY POINT      PATH",
        f"echo  1.0      mathbundle:echo  {kites / 'echo' / '1.0'}",
        f"math  1.0      mathbundle:main  {kites / 'math' / '1.0'}",
    ]


def test_list_json_is_a_list_of_objects(installed_home: Path, project: Path) -> None:
    result = kitecli(installed_home, "list", "--json")
    assert result.code == 0, result.err
    bundles = json.loads(result.out)
    assert [(b["name"], b["version"], b["entry_point"], b["path"]) for b in bundles] == [
        ("echo", "1.0", "mathbundle:echo", str(installed_home / "kites" / "echo" / "1.0")),
        ("math", "1.0", "mathbundle:main", str(installed_home / "kites" / "math" / "1.0")),
    ]
    assert {b["distribution"] for b in bundles} == {"mathbundle"} and {b["source"] for b in bundles} == {str(project)}


def test_installing_again_is_refused_unless_forced(home: Path, project: Path) -> None:
    before = (home / "kites" / "math" / "1.0").stat().st_ino
    result = kitecli(home, "install", str(project))
    assert result.code == 1
    assert result.err.splitlines() == [
        f"kitecli: echo/1.0 is already installed at {home / 'kites' / 'echo' / '1.0'} (use --force to replace it)"]
    assert entries(home) == {"echo", "echo/1.0", "math", "math/1.0"}

    result = kitecli(home, "install", "--force", str(project))
    assert result.code == 0, result.err
    assert (home / "kites" / "math" / "1.0").stat().st_ino != before  # a new venv, renamed into place
    assert entries(home) == {"echo", "echo/1.0", "math", "math/1.0"}
    assert "ECHO" in kitecli(home, "run", "echo").out


# -- run ------------------------------------------------------------------------------------------------


def test_run_passes_everything_after_name_to_the_bundle(installed_home: Path, tmp_path: Path) -> None:
    result = kitecli(installed_home, "run", "echo", "--port", "5000", "-v", "--json", "--", "x", cwd=tmp_path)
    assert result.code == 3, result.err  # the entry point's return value is the exit status
    [line] = result.out.splitlines()
    echoed = json.loads(line.removeprefix("ECHO "))
    assert echoed["argv"] == ["echo", "--port", "5000", "-v", "--json", "--", "x"]
    assert echoed["prefix"] == str(installed_home / "kites" / "echo" / "1.0")  # in the bundle's venv
    assert echoed["kite"] == str(ROOT / "kite" / "__init__.py")  # kitecli's own kite, no download

    result = kitecli(installed_home, "run", "--", "echo/1.0", "--", "--help")  # a first "--" after NAME is dropped
    assert result.code == 3, result.err
    assert json.loads(result.out.removeprefix("ECHO "))["argv"] == ["echo", "--help"]


@pytest.fixture
def client_kite() -> Iterator[Kite]:
    k = Kite("tester", "1.0.0")
    try:
        yield k
    finally:
        k.close()


def test_run_serves_the_bundles_kite(installed_home: Path, client_kite: Kite) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "kitecli", "run", "math", "--port", str(port)], cwd=ROOT,
                            env=env_for(installed_home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + SERVE_TIMEOUT
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()[0]
                assert time.monotonic() < deadline, f"nothing listens on {port} after {SERVE_TIMEOUT} s"
                time.sleep(0.1)
        if Path(f"/proc/{proc.pid}/cmdline").exists():  # kitecli exec'd the bundle's python: same pid
            argv0 = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0].decode()
            assert argv0 == str(installed_home / "kites" / "math" / "1.0" / "bin" / "python")
        with client_kite.new_client(f"http://127.0.0.1:{port}/kite") as c:
            assert c.tell_with_timeout("square", 5, 4) == 16
            assert c.tell_with_timeout("square", 5, 1.5) == 2.25
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


# -- names: several versions, missing, malformed ------------------------------------------------------------


def test_several_versions_need_name_slash_version(home: Path, tmp_path: Path) -> None:
    result = kitecli(home, "install", str(make_project(tmp_path / "v2", version="2.0")))
    assert result.code == 0, result.err
    assert entries(home) == {"echo", "echo/1.0", "echo/2.0", "math", "math/1.0", "math/2.0"}
    assert [line.split()[:2] for line in kitecli(home, "list").out.splitlines()[1:]] == [
        ["echo", "1.0"], ["echo", "2.0"], ["math", "1.0"], ["math", "2.0"]]

    for command in ("run", "uninstall"):
        result = kitecli(home, command, "echo")
        assert result.code == 1
        assert result.err == ("kitecli: ambiguous bundle name 'echo': versions 1.0, 2.0 are installed "
                              "(say which: echo/2.0)\n")
    result = kitecli(home, "run", "echo/2.0", "a")
    assert result.code == 3 and json.loads(result.out.removeprefix("ECHO "))["argv"] == ["echo", "a"]

    result = kitecli(home, "uninstall", "echo/1.0")
    assert (result.code, result.out) == (0, f"uninstalled echo/1.0 ({home / 'kites' / 'echo' / '1.0'})\n")
    assert kitecli(home, "run", "echo", "b").code == 3  # no longer ambiguous
    assert entries(home) == {"echo", "echo/2.0", "math", "math/1.0", "math/2.0"}


def test_missing_and_malformed_names(installed_home: Path) -> None:
    for command in ("run", "uninstall"):
        result = kitecli(installed_home, command, "nosuch")
        assert (result.code, result.err) == (1, "kitecli: no bundle named 'nosuch' is installed (see kitecli list)\n")
        result = kitecli(installed_home, command, "math/9.9")
        assert (result.code, result.err) == (
            1, "kitecli: math/9.9 is not installed (installed versions of math: 1.0)\n")
        for bad in ("a/b/c", "../math", "math/"):
            result = kitecli(installed_home, command, bad)
            assert result.code == 64
            assert result.err.endswith(f"kitecli: invalid bundle {bad!r} (expected NAME or NAME/VERSION)\n")
            assert result.err.startswith(f"usage: kitecli {command}")
    result = kitecli(installed_home, "run")
    assert result.code == 64 and result.err.endswith("kitecli: missing NAME: kitecli run NAME[/VERSION] [ARGS…]\n")
    result = kitecli(installed_home, "uninstall")
    assert result.code == 64 and result.err.endswith("required: NAME[/VERSION]\n")
    result = kitecli(installed_home, "run", "--json", "nosuch")
    assert result.code == 1 and json.loads(result.out) == {"error": {"message": "no bundle named 'nosuch'",
                                                                       "name": "nosuch"}}
    assert entries(installed_home) == {"echo", "echo/1.0", "math", "math/1.0"}


# -- uninstall -------------------------------------------------------------------------------------------------


def test_uninstall_each_then_list_is_empty(home: Path) -> None:
    result = kitecli(home, "uninstall", "echo")
    assert (result.code, result.out) == (0, f"uninstalled echo/1.0 ({home / 'kites' / 'echo' / '1.0'})\n")
    assert entries(home) == {"math", "math/1.0"}  # the name directory went with its last version
    assert kitecli(home, "list").out.splitlines()[1:] == [f"math  1.0      mathbundle:main  {home}/kites/math/1.0"]

    result = kitecli(home, "uninstall", "math/1.0", "--json")
    assert result.code == 0, result.err
    assert json.loads(result.out)["uninstalled"]["path"] == str(home / "kites" / "math" / "1.0")
    assert entries(home) == set()
    result = kitecli(home, "list")
    assert (result.code, result.out) == (0, "")
    assert result.err == f"no kite bundles installed in {home / 'kites'}\n"
    result = kitecli(home, "list", "--json")
    assert (result.code, json.loads(result.out)) == (0, [])


def test_list_with_no_kites_directory(tmp_path: Path) -> None:
    result = kitecli(tmp_path, "list")
    assert (result.code, result.out) == (0, "")
    assert not (tmp_path / "kites").exists()


# -- failed installs leave nothing --------------------------------------------------------------------------


def test_failed_installs_leave_nothing_behind(home: Path, tmp_path: Path) -> None:
    before = entries(home)

    result = kitecli(home, "install", str(tmp_path / "nosuch"))
    assert result.code == 64
    assert f"kitecli: no such file or directory: '{tmp_path / 'nosuch'}'" in result.err

    broken = make_project(tmp_path / "broken")
    (broken / "pyproject.toml").write_text("[project\nname = 'x'\n")
    result = kitecli(home, "install", str(broken))
    assert result.code == 1
    assert result.err == (f"kitecli: {broken / 'pyproject.toml'} is not valid TOML: Expected ']' at the end "
                          "of a table declaration (at line 1, column 9)\n")

    plain = make_project(tmp_path / "plain", entry_points=False)
    result = kitecli(home, "install", str(plain), "--json")
    assert result.code == 1
    message = (f"'{plain}' is not a kite bundle: distribution mathbundle 1.0 declares no entry point in group "
               'kite.kites (add [project.entry-points."kite.kites"] NAME = "module:function")')
    assert result.err == f"kitecli: {message}\n"
    assert json.loads(result.out) == {"error": {"message": message}}

    unbuildable = make_project(tmp_path / "unbuildable")
    (unbuildable / "setup.py").write_text("from setuptools import setup\nsetup(\n")  # a syntax error
    result = kitecli(home, "install", str(unbuildable))
    assert result.code == 1
    assert result.err.startswith(f"kitecli: pip could not install '{unbuildable}' (exit 1); pip said:\n")
    assert "SyntaxError: '(' was never closed" in result.err and "File \"" not in result.err

    assert entries(home) == before


def test_ctrl_c_during_install_leaves_nothing_behind(home: Path, project: Path) -> None:
    before = entries(home)
    proc = subprocess.Popen([sys.executable, "-m", "kitecli", "install", "--force", str(project)], cwd=ROOT,
                            env=env_for(home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.monotonic() + RUN_TIMEOUT
        while not list((home / "kites").glob(".tmp-*/venv/bin/python")):  # the venv is made; pip comes next
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.02)
        time.sleep(0.3)
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal does on Ctrl-C: kitecli and pip get it
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert (proc.returncode, out, err) == (130, "", "kitecli: interrupted\n")
    assert entries(home) == before


def test_a_staging_directory_of_a_dead_kitecli_is_swept(home: Path) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = home / "kites" / f".tmp-{int(dead.stdout)}-abc"
    (stale / "venv").mkdir(parents=True)
    alive = home / "kites" / f".tmp-{os.getpid()}-abc"
    alive.mkdir()
    bundlestore.sweep(home / "kites")
    assert not stale.exists() and alive.exists()


# -- help, kite home ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["install", "list", "run", "uninstall"])
def test_help_has_a_description_and_examples(tmp_path: Path, command: str) -> None:
    result = kitecli(tmp_path, command, "--help")
    assert result.code == 0, result.err
    assert result.out.startswith(f"usage: kitecli {command}")
    assert f"examples:\n  kitecli {command}" in result.out


def test_kites_dir_is_in_the_kite_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("KITE_HOME", str(tmp_path / "h"))
    assert bundlestore.kites_dir() == Path(kitekey.kite_home()) / "kites" == tmp_path / "h" / "kites"
    monkeypatch.delenv("KITE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert bundlestore.kites_dir() == Path(kitekey.kite_home()) / "kites" == tmp_path / ".kite" / "kites"


# -- build isolation ------------------------------------------------------------------------------------


def fake_versions(monkeypatch: pytest.MonkeyPatch, versions: dict[str, str]) -> None:
    """What ``importlib.metadata.version`` says is installed in this interpreter."""

    def version(name: str) -> str:
        if name not in versions:
            raise importlib.metadata.PackageNotFoundError(name)
        return versions[name]

    monkeypatch.setattr(importlib.metadata, "version", version)


def test_no_build_isolation_only_for_setuptools_projects_this_python_can_build(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    project = make_project(tmp_path / "p")
    fake_versions(monkeypatch, {"setuptools": "70.1.0"})  # bdist_wheel built in
    assert bundles._build_isolation(str(project)) == ["--no-build-isolation"]
    assert bundles._build_isolation("mathbundle==1.0") == []  # not a project directory: pip's default
    assert not bundles._can_build_with_setuptools(["setuptools>=75"])
    assert not bundles._can_build_with_setuptools(["setuptools", "cython"])
    fake_versions(monkeypatch, {"setuptools": "65.5.0"})  # needs the wheel package for bdist_wheel
    assert bundles._build_isolation(str(project)) == []
    fake_versions(monkeypatch, {"setuptools": "65.5.0", "wheel": "0.43.0"})
    assert bundles._build_isolation(str(project)) == ["--no-build-isolation"]

    (project / "pyproject.toml").write_text('[build-system]\nrequires = ["hatchling"]\n'
                                            'build-backend = "hatchling.build"\n')
    assert bundles._build_isolation(str(project)) == []
    (project / "pyproject.toml").unlink()  # setup.py only: setuptools' legacy backend
    assert bundles._build_isolation(str(project)) == ["--no-build-isolation"]
