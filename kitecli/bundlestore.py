"""Where kite bundles live and what is recorded about them (no pip, no argparse: directories and JSON).

Layout under the kite home (``$KITE_HOME``, else ``~/.kite``)::

    kites/
      <name>/<version>/          one installed bundle: a complete virtualenv, plus
        kite-bundle.json         name, version, entry point, distribution, source, installed time
      .tmp-<pid>-<random>/       the staging area of an install (or uninstall) in progress

A version directory only ever appears complete: it is built in a staging directory next to it
(same file system) and renamed into place; it is renamed out of place before it is deleted.
A staging directory left by a killed kitecli is removed by the next install (its pid is dead).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from .errors import AnsweredError, CliError, UsageError

log = logging.getLogger("kitecli.bundles")

#: The entry point group a kite bundle declares its kites in (``math = mypkg.server:main``).
GROUP = "kite.kites"
#: The metadata file in each version directory.
METADATA = "kite-bundle.json"
#: Prefix of staging directories (hidden: ``list`` never shows them).
STAGING_PREFIX = ".tmp-"
#: What a bundle name or version may look like: it becomes a directory name.
_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+!-]*\Z")


@dataclass(frozen=True)
class Bundle:
    """One installed bundle: ``kites/<name>/<version>/``."""

    name: str
    version: str
    #: ``module:function``, called with no arguments by ``kitecli run``.
    entry_point: str
    #: The distribution that declared the entry point (``mathbundle``).
    distribution: str
    #: What was given to ``kitecli install`` (an absolute path for a local file or directory).
    source: str
    #: When it was installed (ISO 8601, UTC).
    installed: str
    path: Path

    @property
    def spec(self) -> str:
        return f"{self.name}/{self.version}"

    def to_json(self) -> dict[str, str]:
        return {**asdict(self), "path": str(self.path)}


def kites_dir() -> Path:
    """``<kite home>/kites`` (not created); the kite home as :func:`kite.kitekey.kite_home` finds it
    (``$KITE_HOME``, else ``~/.kite``), without importing kite (~0.1 s) just for that."""
    home = os.environ.get("KITE_HOME", "") or os.path.join(os.path.expanduser("~"), ".kite")
    return Path(home).expanduser().absolute() / "kites"


def is_safe(text: str) -> bool:
    """Whether ``text`` may be a bundle name or version (a plain directory name)."""
    return bool(_SAFE.match(text))


def version_key(version: str) -> list[tuple[int, int | str]]:
    """Sort key ordering ``1.10`` after ``1.9`` (digits as numbers, the rest as text)."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", version) if part]


def venv_bin(venv: Path) -> Path:
    return venv / ("Scripts" if os.name == "nt" else "bin")


def venv_python(venv: Path) -> Path:
    return venv_bin(venv) / ("python.exe" if os.name == "nt" else "python")


def venv_site_packages(venv: Path) -> Path:
    """The purelib directory of a virtualenv made by this interpreter."""
    if os.name == "nt":
        return venv / "Lib" / "site-packages"
    return venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"


# --- reading -------------------------------------------------------------------------------------


def write_metadata(bundle: Bundle) -> None:
    """Write ``kite-bundle.json`` into ``bundle.path`` (as a new file: copies may share inodes)."""
    data = {k: v for k, v in bundle.to_json().items() if k != "path"}
    target = bundle.path / METADATA
    tmp = target.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, target)


def read_metadata(path: Path) -> Bundle | None:
    """The bundle installed at ``path``, or None (logged) when its metadata is missing or unreadable."""
    try:
        data = json.loads((path / METADATA).read_text(encoding="utf-8"))
        fields = {k: str(data[k]) for k in ("name", "version", "entry_point", "distribution", "source", "installed")}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: no readable %s (%s)", path, METADATA, exc)
        return None
    return Bundle(**fields, path=path)


def installed(kites: Path) -> list[Bundle]:
    """Every installed bundle, by name then version."""
    found = []
    for name_dir in sorted(kites.iterdir()) if kites.is_dir() else []:
        if name_dir.name.startswith(".") or not name_dir.is_dir():
            continue
        for version_dir in name_dir.iterdir():
            if version_dir.is_dir() and (bundle := read_metadata(version_dir)) is not None:
                found.append(bundle)
    return sorted(found, key=lambda b: (b.name, version_key(b.version)))


def resolve(kites: Path, spec: str) -> Bundle:
    """The bundle ``spec`` (``name`` or ``name/version``) names.

    Raises :class:`UsageError` (exit 64) for a malformed spec, :class:`AnsweredError` (exit 1) when
    nothing matches or when ``name`` alone matches several versions ("ambiguous").
    """
    name, _, version = spec.partition("/")
    if not is_safe(name) or (version and not is_safe(version)) or (spec.endswith("/") and not version):
        raise UsageError(f"invalid bundle {spec!r} (expected NAME or NAME/VERSION)")
    candidates = [b for b in installed(kites) if b.name == name]
    if not candidates:
        raise AnsweredError(f"no bundle named {name!r} is installed (see kitecli list)",
                            details={"message": f"no bundle named {name!r}", "name": name})
    if version:
        match = [b for b in candidates if b.version == version]
        if not match:
            have = ", ".join(b.version for b in candidates)
            raise AnsweredError(f"{name}/{version} is not installed (installed versions of {name}: {have})",
                                details={"message": f"{name}/{version} is not installed", "name": name,
                                         "versions": [b.version for b in candidates]})
        return match[0]
    if len(candidates) > 1:
        have = ", ".join(b.version for b in candidates)
        raise AnsweredError(f"ambiguous bundle name {name!r}: versions {have} are installed "
                            f"(say which: {name}/{candidates[-1].version})",
                            details={"message": f"ambiguous bundle name {name!r}", "name": name,
                                     "versions": [b.version for b in candidates]})
    return candidates[0]


# --- changing ------------------------------------------------------------------------------------


@contextlib.contextmanager
def staging(kites: Path) -> Iterator[Path]:
    """A fresh ``kites/.tmp-<pid>-…`` directory, deleted on exit whatever happens (Ctrl-C included)."""
    kites.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-", dir=kites))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def sweep(kites: Path) -> None:
    """Delete the staging directories of kitecli processes that no longer run (killed mid-install)."""
    if os.name == "nt" or not kites.is_dir():  # os.kill(pid, 0) would terminate the process on Windows
        return
    for entry in kites.glob(f"{STAGING_PREFIX}*"):
        pid = entry.name[len(STAGING_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            log.info("removing %s, left by a kitecli that is gone", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def copy_tree(src: Path, dst: Path) -> None:
    """Copy a virtualenv, hard-linking files where the file system allows (one bundle per entry point
    costs no extra disk); files that are later rewritten are replaced, never edited in place."""

    def link_or_copy(s: str, d: str) -> None:
        try:
            os.link(s, d)
        except OSError:
            shutil.copy2(s, d)

    shutil.copytree(src, dst, symlinks=True, copy_function=link_or_copy)


def relocate(venv: Path, old: Path, new: Path) -> None:
    """Point a virtualenv built at ``old`` to ``new``, where it is about to be moved.

    A venv is not relocatable: ``pyvenv.cfg``, the activate scripts and every console script's
    shebang hold its absolute path. kitecli itself only ever runs ``<venv>/bin/python`` by path (which
    works from anywhere), but rewriting these keeps the venv's own scripts usable too.
    """
    before, after = os.fsencode(old), os.fsencode(new)
    candidates = [venv / "pyvenv.cfg", *(p for p in venv_bin(venv).iterdir() if not p.is_symlink() and p.is_file())]
    for path in candidates:
        data = path.read_bytes()
        text_like = path.name == "pyvenv.cfg" or path.name.lower().startswith("activate") or data.startswith(b"#!")
        if before not in data or not text_like:
            continue
        tmp = path.with_name(path.name + ".kitecli-tmp")
        tmp.write_bytes(data.replace(before, after))
        shutil.copymode(path, tmp)
        os.replace(tmp, path)


def commit(moves: list[tuple[Path, Path]], scratch: Path, force: bool) -> None:
    """Rename each staged directory to its final place, all or none.

    An existing final directory is refused (:class:`CliError`) unless ``force``; then it is moved
    into ``scratch`` (deleted with it) and put back if anything fails.
    """
    done: list[tuple[Path, Path, Path | None]] = []
    made_parents: list[Path] = []
    try:
        for i, (staged, final) in enumerate(moves):
            if not final.parent.is_dir():
                final.parent.mkdir(parents=True)
                made_parents.append(final.parent)
            backup = None
            if final.exists():
                if not force:
                    raise CliError(f"{final.parent.name}/{final.name} is already installed at {final} "
                                   "(use --force to replace it)")
                backup = scratch / f"replaced-{i}"
                os.rename(final, backup)
            try:
                os.rename(staged, final)
            except BaseException:
                if backup is not None:
                    os.rename(backup, final)
                raise
            done.append((staged, final, backup))
    except OSError as exc:
        _undo(done, made_parents)
        raise CliError(f"could not move the new bundle into {kites_dir()}: {exc}") from None
    except BaseException:
        _undo(done, made_parents)
        raise


def _undo(done: list[tuple[Path, Path, Path | None]], made_parents: list[Path]) -> None:
    for staged, final, backup in reversed(done):
        os.rename(final, staged)
        if backup is not None:
            os.rename(backup, final)
    for parent in made_parents:
        with contextlib.suppress(OSError):
            parent.rmdir()


def remove(kites: Path, bundle: Bundle) -> None:
    """Delete ``bundle`` (renamed out of place first), and its name directory when it was the last version."""
    with staging(kites) as scratch:
        os.rename(bundle.path, scratch / "removed")
        with contextlib.suppress(OSError):
            bundle.path.parent.rmdir()  # only when empty
