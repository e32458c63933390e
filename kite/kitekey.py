"""The kite.key file: a kite's identity and its Kontrol's public key (PROTOCOL.md §5.1).

The file lives at ``$KITE_HOME/kite.key`` when ``KITE_HOME`` is set, otherwise at
``~/.kite/kite.key``. It holds one RS256 JWT whose claims are ``iss`` (the Kontrol
user), ``sub`` (this user), ``jti`` (an id), ``kontrolURL`` and ``kontrolKey``
(Kontrol's public key PEM, which also verifies the key itself).

>>> path = key_path()          # where read() looks          # doctest: +SKIP
>>> claims = parse(read())     # self-verified claims        # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import stat
import tempfile
from dataclasses import dataclass
from typing import Any

from .auth import kite_key_claims
from .errors import KiteError

log = logging.getLogger("kite.kitekey")

#: Directory under the home directory when ``KITE_HOME`` is unset.
KITE_DIR_NAME = ".kite"
#: File name inside the kite home.
KITE_KEY_FILE_NAME = "kite.key"
#: The kite home holds a private credential: owner only.
DIR_MODE = 0o700
#: kite.key is a bearer credential: readable and writable by the owner only.
#: (Go writes 0400 after deleting the old file; 0600 lets us replace it atomically.)
FILE_MODE = 0o600
#: Permission bits that must not be set on kite.key: anyone in its group or on the machine
#: who can read it can call as its user. :func:`read` warns (it does not refuse: Go reads any
#: mode, and a shared deployment may mean it).
SHARED_MODE_BITS = stat.S_IRWXG | stat.S_IRWXO


class KiteKeyError(Exception):
    """kite.key is missing, unreadable or not a valid, self-verifying kite key.

    The message names the file.
    """


class KiteKeyNotFoundError(KiteKeyError, FileNotFoundError):
    """There is no kite.key at the expected path."""


@dataclass(frozen=True)
class KiteKey:
    """A parsed, self-verified kite key."""

    raw: str
    claims: dict[str, Any]

    @property
    def username(self) -> str:
        """``sub``: the user the key belongs to."""
        return _str(self.claims.get("sub"))

    @property
    def kontrol_user(self) -> str:
        """``iss``: the Kontrol user that issued the key."""
        return _str(self.claims.get("iss"))

    @property
    def id(self) -> str:
        """``jti``."""
        return _str(self.claims.get("jti"))

    @property
    def kontrol_url(self) -> str:
        return _str(self.claims.get("kontrolURL"))

    @property
    def kontrol_key(self) -> str:
        """Kontrol's public key PEM."""
        return _str(self.claims.get("kontrolKey"))


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def kite_home() -> str:
    """``$KITE_HOME``, else ``~/.kite``."""
    home = os.environ.get("KITE_HOME", "")
    if home:
        return home
    return os.path.join(os.path.expanduser("~"), KITE_DIR_NAME)


def key_path() -> str:
    """The kite.key path: ``$KITE_HOME/kite.key``, else ``~/.kite/kite.key``."""
    return os.path.join(kite_home(), KITE_KEY_FILE_NAME)


def read(path: str | None = None) -> str:
    """The kite key text (surrounding whitespace trimmed) from ``path`` or :func:`key_path`.

    Raises :class:`KiteKeyNotFoundError` when the file does not exist and
    :class:`KiteKeyError` when it cannot be read or is empty.
    """
    path = path or key_path()
    try:
        with open(path, encoding="utf-8") as f:
            _warn_if_shared(path, os.fstat(f.fileno()).st_mode)
            text = f.read().strip()
    except FileNotFoundError:
        raise KiteKeyNotFoundError(2, f"kite.key not found at {path}", path) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise KiteKeyError(f"cannot read kite.key at {path}: {exc}") from None
    if not text:
        raise KiteKeyError(f"kite.key at {path} is empty")
    return text


def _warn_if_shared(path: str, mode: int) -> None:
    """Log a warning when kite.key is open to its group or to others (see :data:`SHARED_MODE_BITS`)."""
    if mode & SHARED_MODE_BITS:
        log.warning("kite.key at %s has mode %04o: group or others have access to it (and can call as its user); "
                    "chmod 600 it", path, stat.S_IMODE(mode))


def write(key: str, path: str | None = None) -> str:
    """Write ``key`` to ``path`` (default :func:`key_path`) atomically, mode 0600.

    The directory is created with mode 0700 when missing. The key goes to a
    temporary file in the same directory which then replaces the old file, so
    readers never see a half-written key. Returns the path.
    """
    path = path or key_path()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, mode=DIR_MODE, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".kite.key.", dir=directory)
    try:
        os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(key.strip())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def parse(token: str | None = None, path: str | None = None) -> KiteKey:
    """Parse and self-verify a kite key: ``token`` itself, or the file at ``path``/:func:`key_path`.

    The key must be RS256, signed by the public key in its own ``kontrolKey``
    claim, and within its time claims. Raises :class:`KiteKeyError` naming the
    file (or "kite key" for a string) on any failure.
    """
    where = "kite key"
    if token is None:
        path = path or key_path()
        token = read(path)
        where = f"kite.key at {path}"
    try:
        claims = kite_key_claims(token.strip())
    except KiteError as exc:
        raise KiteKeyError(f"{where} is invalid: {exc.message}") from None
    return KiteKey(token.strip(), claims)


def parse_file(path: str) -> KiteKey:
    """Parse and self-verify the kite key in ``path`` (Go's ``kitekey.ParseFile``)."""
    return parse(path=path)
