"""``kitecli install | list | run | uninstall``: kite bundles, each in its own virtualenv.

A kite bundle is a Python distribution that declares entry points in the group ``kite.kites``
(``math = mypkg.server:main``: a function that runs a kite). ``install`` puts it in a virtualenv
of its own at ``$KITE_HOME/kites/<name>/<version>/`` (name: the entry point's; version: the
distribution's); the layout and the guarantees are in :mod:`kitecli.bundlestore`.

How an install works, and why:

* The venv is built in a staging directory ``kites/.tmp-…`` (same file system), then renamed into
  place and its scripts' paths rewritten (:func:`~kitecli.bundlestore.relocate`). kitecli runs a
  bundle with ``<venv>/bin/python`` by path, never through a script. Any failure, Ctrl-C included,
  deletes the staging directory: nothing is left behind.
* The venv sees the packages of the interpreter kitecli runs in (``kite`` and its dependencies),
  so a bundle needs no network for them: a ``.pth`` file in its site-packages adds that
  interpreter's site-packages directories after its own. (``--system-site-packages`` is not used:
  when kitecli itself runs in a virtualenv, it would expose the *base* interpreter's packages, not
  the ones kitecli sees.) Removing or rebuilding kitecli's own environment breaks its bundles.
* pip is the one of kitecli's interpreter (made visible by that ``.pth``), run inside the venv:
  no pip is installed into it (``ensurepip`` only when kitecli's interpreter has none).
* Build isolation: a local project directory whose build backend is setuptools is built with
  ``--no-build-isolation`` when kitecli's interpreter can build it (setuptools satisfying the
  project's ``build-system.requires``, and ``wheel`` or setuptools >= 70.1 for ``bdist_wheel``):
  no network, and fast. Anything else gets pip's default, an isolated build environment whose
  build requirements pip fetches from the index.
* A distribution with several ``kite.kites`` entry points is installed once per entry point
  name: ``kites/<each name>/<version>/``, copies of one venv (hard links where possible), so each
  can be run and uninstalled on its own.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import importlib.util
import json
import logging
import os
import subprocess
import sys
import venv
from importlib.metadata import EntryPoint
from pathlib import Path
from typing import Any

from . import bundlestore as store
from .errors import EXIT_OK, CliError, UsageError
from .output import print_json, table

log = logging.getLogger("kitecli.bundles")

#: Lines of pip's output shown when it fails (all of it with -v).
PIP_TAIL_LINES = 15

#: Run in the bundle's venv by ``kitecli run``: ``-c LAUNCHER NAME MODULE:FUNCTION ARGS…``.
LAUNCHER = """\
import sys
from importlib.metadata import EntryPoint
if sys.path and sys.path[0] == "":
    del sys.path[0]  # -c put the current directory first: it must not shadow the bundle's modules
name, value = sys.argv[1:3]
sys.argv = [name, *sys.argv[3:]]
sys.exit(EntryPoint(name, value, "kite.kites").load()())
"""

#: Run in the new venv: the distribution's name, version and ``kite.kites`` entry points, as JSON.
READ_ENTRY_POINTS = """\
import json, sys
from importlib.metadata import distribution
d = distribution(sys.argv[1])
eps = [[e.name, e.value] for e in d.entry_points if e.group == "kite.kites"]
print(json.dumps({"name": d.metadata["Name"], "version": d.version, "entry_points": eps}))
"""

INSTALL_DESCRIPTION = """\
Install a kite bundle: a Python distribution declaring entry points in the group kite.kites,
e.g. in pyproject.toml:

  [project.entry-points."kite.kites"]
  math = "mathbundle:main"

SOURCE is anything pip installs: a project directory, a wheel or sdist file, a requirement.
Each entry point NAME gets its own virtualenv at $KITE_HOME/kites/NAME/VERSION/, which also
sees the packages of kitecli's own Python (kite and its dependencies). A failed install leaves
nothing behind."""

INSTALL_EPILOG = """\
examples:
  kitecli install ./mathbundle
  kitecli install dist/mathbundle-1.0-py3-none-any.whl --force
  kitecli install 'mathbundle==1.0'"""

LIST_DESCRIPTION = "List the installed kite bundles: name, version, entry point and path."
LIST_EPILOG = """\
examples:
  kitecli list
  kitecli list --json"""

RUN_DESCRIPTION = """\
Run an installed kite bundle: its entry point is called in its own virtualenv (kitecli execs
its Python). Everything after NAME goes to the bundle as its sys.argv[1:] (a first "--" is
dropped). NAME is a bundle name, or NAME/VERSION when several versions are installed.
Exit status: the bundle's; 1 when NAME is not installed or is ambiguous, 64 when it is malformed."""

RUN_EPILOG = """\
examples:
  kitecli run math --port 5000
  kitecli run math/1.0 -- --help"""

UNINSTALL_DESCRIPTION = """\
Remove an installed kite bundle (its whole virtualenv). NAME is a bundle name, or NAME/VERSION
when several versions are installed. Exit status 1 when it is not installed or ambiguous."""

UNINSTALL_EPILOG = """\
examples:
  kitecli uninstall math
  kitecli uninstall math/1.0"""


def add_parsers(subparsers: Any, parents: list[argparse.ArgumentParser]) -> None:
    """``install``, ``list``, ``run`` and ``uninstall``."""
    from .main import SUMMARIES

    def add(name: str, description: str, epilog: str) -> argparse.ArgumentParser:
        parser: argparse.ArgumentParser = subparsers.add_parser(
            name, parents=parents, help=SUMMARIES[name], description=description, epilog=epilog,
            formatter_class=argparse.RawDescriptionHelpFormatter)
        return parser

    p = add("install", INSTALL_DESCRIPTION, INSTALL_EPILOG)
    p.add_argument("source", metavar="SOURCE", help="a project directory, a wheel/sdist file or a requirement")
    p.add_argument("--force", action="store_true", help="replace the same name and version when installed")
    p.set_defaults(run=install)

    p = add("list", LIST_DESCRIPTION, LIST_EPILOG)
    p.set_defaults(run=list_bundles)

    p = add("run", RUN_DESCRIPTION, RUN_EPILOG)
    # optional for argparse, which would call ARGS required too when NAME is missing; run() requires it
    p.add_argument("name", nargs="?", metavar="NAME[/VERSION]", help="the bundle")
    p.add_argument("bundle_args", nargs=argparse.REMAINDER, metavar="ARGS", help="passed to the bundle")
    p.set_defaults(run=run)

    p = add("uninstall", UNINSTALL_DESCRIPTION, UNINSTALL_EPILOG)
    p.add_argument("name", metavar="NAME[/VERSION]", help="the bundle")
    p.set_defaults(run=uninstall)


# --- list, run, uninstall ------------------------------------------------------------------------


def list_bundles(args: argparse.Namespace) -> int:
    bundles = store.installed(store.kites_dir())
    if args.json:
        print_json([b.to_json() for b in bundles], args)
    elif bundles:
        rows = [[b.name, b.version, b.entry_point, str(b.path)] for b in bundles]
        print(table(rows, ["NAME", "VERSION", "ENTRY POINT", "PATH"]))
    else:
        print(f"no kite bundles installed in {store.kites_dir()}", file=sys.stderr)
    return EXIT_OK


def run(args: argparse.Namespace) -> int:
    """Exec the bundle's Python on :data:`LAUNCHER`; returns only if that fails."""
    if not args.name:
        raise UsageError("missing NAME: kitecli run NAME[/VERSION] [ARGS…]")
    bundle = store.resolve(store.kites_dir(), args.name)
    python = store.venv_python(bundle.path)
    bundle_args = list(args.bundle_args)
    if bundle_args[:1] == ["--"]:
        del bundle_args[0]
    env = {**os.environ, "VIRTUAL_ENV": str(bundle.path)}
    env["PATH"] = os.pathsep.join([str(store.venv_bin(bundle.path)), *filter(None, [env.get("PATH")])])
    argv = [str(python), "-c", LAUNCHER, bundle.name, bundle.entry_point, *bundle_args]
    log.debug("exec %s for %s (%s)", python, bundle.spec, bundle.entry_point)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(python, argv, env)
    except OSError as exc:
        raise CliError(f"cannot run {bundle.spec}: {python}: {exc.strerror} "
                       "(reinstall it with kitecli install --force)") from None


def uninstall(args: argparse.Namespace) -> int:
    kites = store.kites_dir()
    bundle = store.resolve(kites, args.name)
    store.remove(kites, bundle)
    if args.json:
        print_json({"uninstalled": bundle.to_json()}, args)
    else:
        print(f"uninstalled {bundle.spec} ({bundle.path})")
    return EXIT_OK


# --- install -------------------------------------------------------------------------------------


def install(args: argparse.Namespace) -> int:
    source = _source(args.source)
    isolation = _build_isolation(args.source)
    kites = store.kites_dir()
    store.sweep(kites)
    with store.staging(kites) as scratch:
        env_dir = scratch / "venv"
        log.info("creating a virtualenv in %s", env_dir)
        python = _create_venv(env_dir)
        dist = _pip_install(python, [*isolation, args.source], scratch / "pip-report.json", args.verbose)
        info = _read_entry_points(python, dist)
        bundles = _bundles(info, source, kites, args.force)
        moves = [(env_dir if i == 0 else scratch / f"copy-{i}", b.path) for i, b in enumerate(bundles)]
        for staged, _ in moves[1:]:
            store.copy_tree(env_dir, staged)  # before env_dir is relocated
        for (staged, _), bundle in zip(moves, bundles, strict=True):
            store.relocate(staged, env_dir, bundle.path)
            store.write_metadata(_at(bundle, staged))
        store.commit(moves, scratch, args.force)
    if args.json:
        print_json({"installed": [b.to_json() for b in bundles]}, args)
    else:
        for b in bundles:
            print(f"installed {b.spec} ({b.entry_point}) in {b.path}")
    return EXIT_OK


def _source(text: str) -> str:
    """What is recorded as the source: the absolute path of a local file or directory, else ``text``.

    Something that looks like a path but does not exist is a usage error (before any venv is made).
    """
    if os.path.exists(text):
        return os.path.abspath(text)
    looks_like_path = "://" not in text and "@" not in text and (
        text.startswith((".", "~")) or os.sep in text or text.endswith((".whl", ".tar.gz", ".zip")))
    if looks_like_path:
        raise UsageError(f"no such file or directory: {text!r} (SOURCE is a project directory, a wheel or "
                         "sdist file, or a requirement such as 'mathbundle==1.0')")
    return text


def _create_venv(env_dir: Path) -> Path:
    """A venv at ``env_dir`` that also sees this interpreter's site-packages; returns its python."""
    has_pip = importlib.util.find_spec("pip") is not None
    venv.EnvBuilder(with_pip=not has_pip, symlinks=os.name != "nt").create(env_dir)
    import site

    dirs = [*site.getsitepackages()]
    if site.ENABLE_USER_SITE and os.path.isdir(site.getusersitepackages()):
        dirs.append(site.getusersitepackages())
    lines = "; ".join(f"site.addsitedir({d!r})" for d in dirs)
    (store.venv_site_packages(env_dir) / "kitecli-parent-env.pth").write_text(f"import site; {lines}\n")
    return store.venv_python(env_dir)


def _pip_install(python: Path, pip_args: list[str], report: Path, verbose: bool) -> str:
    """``pip install [OPTIONS] SOURCE`` in the venv of ``python``; returns the name of the distribution
    SOURCE is (the one pip's report marks as requested)."""
    source = pip_args[-1]
    cmd = [str(python), "-m", "pip", "install", "--no-input", "--disable-pip-version-check",
           "--no-warn-script-location", "--report", str(report), *pip_args]
    log.info("running %s", " ".join(cmd))
    if verbose:
        output = ""
        code = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=sys.stderr, stderr=sys.stderr).returncode
    else:
        proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, errors="replace")
        output, code = proc.stdout, proc.returncode
    if code != 0:
        tail = [line for line in _without_tracebacks(output.splitlines()) if line.strip()][-PIP_TAIL_LINES:]
        detail = ("; pip said:\n  " + "\n  ".join(tail)) if tail else " (see pip's output above)"
        raise CliError(f"pip could not install {source!r} (exit {code}){detail}",
                       details={"message": f"pip could not install {source!r}", "source": source,
                                "pip_exit": code, "pip_output": tail})
    requested = [item["metadata"]["name"] for item in json.loads(report.read_text())["install"]
                 if item.get("requested")]
    if not requested:
        raise CliError(f"pip installed nothing for {source!r}: it is already installed in kitecli's own "
                       f"environment ({sys.prefix}); give the path of its project or wheel instead")
    return str(requested[0])


def _without_tracebacks(lines: list[str]) -> list[str]:
    """``lines`` without Python traceback frames (a build backend that crashed): its exception stays."""
    kept: list[str] = []
    frame_indent: int | None = None
    for line in lines:
        indent = len(line) - len(line.lstrip())
        if frame_indent is not None and indent > frame_indent:
            continue  # the source line and carets of a frame
        frame_indent = None
        if line.strip().startswith("Traceback (most recent call last)"):
            continue
        if line.strip().startswith('File "'):
            frame_indent = indent
            continue
        kept.append(line)
    return kept


def _build_isolation(source: str) -> list[str]:
    """``["--no-build-isolation"]`` for a setuptools project this interpreter can build, else ``[]``
    (a :class:`CliError` for a project whose pyproject.toml is broken)."""
    pyproject = Path(source) / "pyproject.toml"
    if not Path(source).is_dir():
        return []
    try:
        tomllib = importlib.import_module("tomllib")
    except ImportError:  # Python 3.10: pip's default
        return []
    try:
        build = tomllib.loads(pyproject.read_text(encoding="utf-8")).get("build-system", {}) \
            if pyproject.exists() else {}
    except ValueError as exc:  # pip would crash on it with a traceback
        raise CliError(f"{pyproject} is not valid TOML: {exc}") from None
    except OSError as exc:
        raise CliError(f"cannot read {pyproject}: {exc.strerror}") from None
    backend = build.get("build-backend", "setuptools.build_meta:__legacy__")
    requires = build.get("requires", ["setuptools>=40.8.0"])
    if not str(backend).startswith("setuptools.build_meta") or not _can_build_with_setuptools(requires):
        return []
    log.info("building %s with this interpreter's setuptools (--no-build-isolation)", source)
    return ["--no-build-isolation"]


def _can_build_with_setuptools(requires: object) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        from packaging.requirements import InvalidRequirement, Requirement
    except ImportError:
        return False
    try:
        reqs = [Requirement(str(r)) for r in requires] if isinstance(requires, list) else None
        if reqs is None:
            return False
        installed = {name: version(name) for name in ("setuptools", "wheel") if _has(name)}
        if "setuptools" not in installed or any(r.name.lower() not in installed for r in reqs):
            return False
        if not all(r.specifier.contains(installed[r.name.lower()], prereleases=True) for r in reqs):
            return False
        # setuptools < 70.1 builds wheels with the wheel package's bdist_wheel
        major_minor = tuple(int(p) for p in installed["setuptools"].split(".")[:2])
        return "wheel" in installed or major_minor >= (70, 1)
    except (InvalidRequirement, PackageNotFoundError, ValueError):
        return False


def _has(distribution: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(distribution)
    except PackageNotFoundError:
        return False
    return True


def _read_entry_points(python: Path, dist: str) -> dict[str, Any]:
    proc = subprocess.run([str(python), "-c", READ_ENTRY_POINTS, dist], stdin=subprocess.DEVNULL,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        raise CliError(f"cannot read the entry points of {dist}: {last[0]}")
    info: dict[str, Any] = json.loads(proc.stdout)
    return info


def _bundles(info: dict[str, Any], source: str, kites: Path, force: bool) -> list[store.Bundle]:
    """One :class:`~kitecli.bundlestore.Bundle` per ``kite.kites`` entry point, checked."""
    dist, version = str(info["name"]), str(info["version"])
    if not info["entry_points"]:
        raise CliError(f"{source!r} is not a kite bundle: distribution {dist} {version} declares no entry point "
                       f'in group {store.GROUP} (add [project.entry-points."{store.GROUP}"] NAME = "module:function")')
    if not store.is_safe(version):
        raise CliError(f"distribution {dist} has an unusable version {version!r}")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    bundles = []
    for name, value in sorted(info["entry_points"]):
        if not store.is_safe(name):
            raise CliError(f"entry point {name!r} of {dist}: invalid bundle name (letters, digits, . _ - only)")
        if EntryPoint(name, value, store.GROUP).attr is None:
            raise CliError(f"entry point {name} = {value!r} of {dist}: expected module:function")
        path = kites / name / version
        if path.exists() and not force:
            raise CliError(f"{name}/{version} is already installed at {path} (use --force to replace it)")
        bundles.append(store.Bundle(name, version, value, dist, source, now, path))
    return bundles


def _at(bundle: store.Bundle, path: Path) -> store.Bundle:
    from dataclasses import replace

    return replace(bundle, path=path)
