"""Who may see Kontrol's dashboard: kite keys signed by this Kontrol, a password file, session cookies.

* **Kite keys.** A kite key (the JWT text of a ``kite.key``) logs in when it is RS256, signed by the
  key pair named in its ``kontrolKey`` claim, that pair is one of this Kontrol's live (not retired)
  pairs, ``iss`` is Kontrol's user and it has not expired: what Kontrol's own verifier checks, plus
  the issuer and "not retired" (a retired pair's keys still register, re-signed, but open no page).
* **Password file** (``kontrol --dashboard-password-file FILE``): lines ``user:hash``, the hash made by
  :func:`hash_password` (``kontrol --dashboard-hash-password USER`` prints such a line): scrypt with a
  random salt. The file is read at each login, so edits take effect without a restart.
* **Sessions.** A successful login gets a signed, timestamped cookie (itsdangerous, which Flask
  ships) valid for :data:`SESSION_TTL`. It is signed with a secret derived from Kontrol's key pairs
  (HMAC of a fixed label keyed by each live pair's private key), so every ``--workers`` process and
  every restart accepts it, and retiring a pair ends the sessions it signed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from itsdangerous import BadSignature, URLSafeTimedSerializer

from kite import KiteError
from kite.wire.jws import decode_jwt

from ..storage import KeyPairDeletedError, KeyPairNotFoundError, StorageError

if TYPE_CHECKING:
    from ..kontrol import Kontrol

log = logging.getLogger("kontrol.dashboard")

#: Seconds a dashboard session lasts (a working day).
SESSION_TTL = 8 * 3600
#: Name of the session cookie (scoped to the dashboard's path).
SESSION_COOKIE = "kontrol_dashboard"
#: itsdangerous salt: a cookie signed for something else never passes as a session.
SESSION_SALT = "kontrol.dashboard.session"
#: The label HMAC-ed with a pair's private key to get that pair's session secret.
SESSION_SECRET_LABEL = b"kontrol dashboard session secret v1"
#: Seconds the session secrets (from the storage's key pairs) are remembered, as key pair lookups are.
SECRETS_TTL = 10.0

#: scrypt cost (N, r, p): 16 MiB and ~50 ms per hash, the parameters of the scrypt paper for logins.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
#: Bytes of scrypt salt and output.
SCRYPT_SALT_BYTES, SCRYPT_KEY_BYTES = 16, 32
#: Largest N accepted from a password file line (a hostile file must not exhaust memory).
SCRYPT_MAX_N = 2**20
#: scrypt's memory limit for the accepted parameters (128 * N * r bytes, plus slack).
SCRYPT_MAX_MEMORY = 256 * 1024 * 1024
#: The hash format's tag: ``scrypt$N$r$p$salt$key`` (salt and key base64).
SCRYPT_TAG = "scrypt"
#: Longest kite key or password accepted at the login form (a kite key is ~1.5 KB).
MAX_CREDENTIAL_LENGTH = 16 * 1024


class LoginRefused(Exception):
    """A login attempt was refused; the message says why (it is shown on the login page)."""


# -- passwords -------------------------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, maxmem=SCRYPT_MAX_MEMORY,
                          dklen=SCRYPT_KEY_BYTES)


def hash_password(password: str) -> str:
    """The password-file hash of ``password``: ``scrypt$N$r$p$salt$key`` with a random salt."""
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    key = _scrypt(password, salt, SCRYPT_N, SCRYPT_R, SCRYPT_P)
    return f"{SCRYPT_TAG}${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(key)}"


def check_password(stored: str, password: str) -> bool:
    """Whether ``password`` matches the hash ``stored`` (False for a malformed hash)."""
    try:
        tag, n, r, p, salt, key = stored.split("$")
        if tag != SCRYPT_TAG or not 1 < int(n) <= SCRYPT_MAX_N:
            return False
        expected = base64.b64decode(key, validate=True)
        got = _scrypt(password, base64.b64decode(salt, validate=True), int(n), int(r), int(p))
    except (ValueError, MemoryError):
        return False
    return hmac.compare_digest(got, expected)


#: Checked when the user is unknown, so that a wrong user costs as long as a wrong password.
_DUMMY_HASH = hash_password(secrets.token_hex(8))


def read_password_file(path: str) -> dict[str, str]:
    """The ``user -> hash`` lines of a password file (blank lines and ``#`` comments skipped).

    Raises ``OSError`` when it cannot be read and ``ValueError`` for a line that is not ``user:hash``.
    """
    users: dict[str, str] = {}
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, sep, stored = line.partition(":")
            if not sep or not user or not stored.startswith(SCRYPT_TAG + "$"):
                raise ValueError(f"{path}:{number}: expected user:{SCRYPT_TAG}$... "
                                 "(kontrol --dashboard-hash-password USER prints one)")
            users[user] = stored
    return users


# -- the gate --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Session:
    """A logged-in viewer: who, how they logged in (``kiteKey`` or ``password``), until when (Unix s)."""

    username: str
    method: str
    expires_at: float = 0.0


class Gate:
    """Logins and sessions of one Kontrol's dashboard."""

    def __init__(self, kontrol: Kontrol, password_file: str | None = None):
        self.kontrol = kontrol
        self.password_file = password_file
        if password_file:
            read_password_file(password_file)  # fail at startup, not at the first login
        self._secrets: list[bytes] = []
        self._secrets_until = 0.0

    # -- logging in -----------------------------------------------------------------------------

    def login_with_kite_key(self, key: str) -> Session:
        """A session for the holder of ``key``, or :class:`LoginRefused`."""
        key = key.strip()
        if not key or len(key) > MAX_CREDENTIAL_LENGTH:
            raise LoginRefused("paste the content of a kite.key")
        try:
            username = self.kontrol.kite.verifier.verify_kite_key(key)  # RS256, trusted pair, signature, exp
            claims = decode_jwt(key).claims
        except KiteError as exc:
            raise LoginRefused(f"kite key refused: {exc.message}") from None
        if claims.get("iss") != self.kontrol.username:
            raise LoginRefused(f"kite key refused: not issued by {self.kontrol.username!r}")
        try:
            self.kontrol.keypairs.by_public(str(claims.get("kontrolKey", "")))
        except KeyPairDeletedError:
            raise LoginRefused("kite key refused: its key pair was retired (register again for a new key)") from None
        except KeyPairNotFoundError:
            raise LoginRefused("kite key refused: not signed by this Kontrol") from None
        return Session(username, "kiteKey", time.time() + SESSION_TTL)

    def login_with_password(self, username: str, password: str) -> Session:
        """A session for ``username`` if the password file has it with this password."""
        if not self.password_file:
            raise LoginRefused("password login is not enabled (kontrol --dashboard-password-file)")
        if len(username) > MAX_CREDENTIAL_LENGTH or len(password) > MAX_CREDENTIAL_LENGTH:
            raise LoginRefused("wrong user or password")
        try:
            users = read_password_file(self.password_file)
        except (OSError, ValueError) as exc:
            log.error("dashboard password file: %s", exc)
            raise LoginRefused("password login is unavailable") from None
        stored = users.get(username)
        matches = check_password(stored or _DUMMY_HASH, password)
        if stored is None or not matches:
            raise LoginRefused("wrong user or password")
        return Session(username, "password", time.time() + SESSION_TTL)

    # -- sessions -------------------------------------------------------------------------------

    def _session_secrets(self) -> list[bytes]:
        """One secret per live key pair, oldest first (itsdangerous signs with the last: the current)."""
        now = time.monotonic()
        if not self._secrets or now >= self._secrets_until:
            try:
                pairs = self.kontrol.keypairs.storage.list_key_pairs() or [self.kontrol.keypairs.current()]
            except StorageError:
                if not self._secrets:
                    raise
                log.warning("dashboard: cannot list key pairs; keeping the session secrets of %d s ago",
                            int(SECRETS_TTL))
                self._secrets_until = now + SECRETS_TTL
                return self._secrets
            # newest first from the storage: reversed, so that the current pair's secret signs
            self._secrets = [hmac.new(p.private.encode(), SESSION_SECRET_LABEL, hashlib.sha256).digest()
                             for p in reversed(pairs)]
            self._secrets_until = now + SECRETS_TTL
        return self._secrets

    def _serializer(self) -> URLSafeTimedSerializer:
        return URLSafeTimedSerializer(self._session_secrets(), salt=SESSION_SALT)

    def cookie_for(self, session: Session) -> str:
        """The signed cookie value for ``session`` (:class:`LoginRefused` while the storage is unavailable)."""
        try:
            return self._serializer().dumps({"u": session.username, "m": session.method})
        except StorageError as exc:
            log.error("dashboard login: %s", exc)
            raise LoginRefused("Kontrol's storage is unavailable; try again") from None

    def session_of(self, cookie: str | None) -> Session | None:
        """The session a cookie value stands for, or None (missing, forged, expired, pair retired)."""
        if not cookie or len(cookie) > MAX_CREDENTIAL_LENGTH:
            return None
        try:
            data, signed_at = self._serializer().loads(cookie, max_age=SESSION_TTL, return_timestamp=True)
        except BadSignature:
            return None
        except StorageError as exc:
            log.warning("dashboard session check: %s", exc)
            return None
        if not isinstance(data, dict) or not isinstance(data.get("u"), str) or not isinstance(data.get("m"), str):
            return None
        return Session(data["u"], data["m"], signed_at.timestamp() + SESSION_TTL)

