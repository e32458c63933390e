"""Authentication: the ``kiteKey`` and ``token`` authenticators (PROTOCOL.md §5).

Both credentials are RS256 JWTs:

* a **kite key** (``kiteKey``) carries the Kontrol public key that signed it in
  its ``kontrolKey`` claim; the callee accepts it when it trusts that key
  (``Config.verify_func``, by default: byte-identical to its own
  ``Config.kontrol_key``) and the signature verifies with it (§5.4);
* a **token** (``token``) is short-lived, issued by Kontrol for a set of target
  kites, and must be signed by the callee's own Kontrol key, issued by its
  Kontrol user and addressed to it (audience, §5.5).

Layers, as in jwt-go (parse, key function, signature, claims): :mod:`kite.wire.jws` has
PyJWT parse the credential once (after our size cap) and check its RS256 signature with the
key chosen here; PyJWT's exceptions become :class:`~kite.errors.AuthenticationError`. The
policy is this module: which key (the trusted Kontrol key; for a kite key, the one it
carries once that is trusted), issuer, time claims on this verifier's clock with its leeway,
audience, username, and the caches. PyJWT's own claim checks stay off: they read the system
clock, which tests replace here, and word their errors unlike Go's, which callers match.

What this module checks beyond the Go kite (stricter, never looser):

* only ``RS256`` is accepted, before anything else is trusted: ``none``, the HS*
  family (including the HS256-keyed-with-the-public-key confusion) and other
  RSA variants are refused;
* a credential longer than :data:`kite.wire.jws.MAX_JWT_LENGTH` is refused before decoding;
* tokens must carry ``exp`` and a non-empty ``iss``;
* kite keys must belong to the callee's own user unless the method is opened to
  other users or ``Config.kite_key_any_user`` is set (see :class:`Verifier`).

Time claims are checked with :data:`DEFAULT_LEEWAY` of clock skew (Go allows
none). Failure messages are the Go kite's texts where it has them; a token with
a bad signature is reported as ``token is expired``, like the original, so that
Go and Python callers fetch a fresh token after a Kontrol key rotation.

Costs: parsing a PEM is cheap for public keys but this module still parses each
distinct PEM once (:func:`kite.wire.jws.load_public_key` is an LRU cache), and remembers each
successfully verified credential until it expires (:class:`Verifier`), so a
repeated call with the same token costs a dict lookup.
"""

from __future__ import annotations

import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric import rsa

from .config import DEFAULT_AUTH_LEEWAY
from .errors import AuthenticationError, KiteError
from .wire.jws import JWT, SignatureInvalidError, decode_jwt, load_public_key, require_rs256, verify_signature
from .wire.protocol import KiteIdentity

if TYPE_CHECKING:
    from .kite import Kite
    from .request import Request

log = logging.getLogger("kite.auth")

#: Authentication types with a built-in authenticator (§5.2).
KITE_KEY = "kiteKey"
TOKEN = "token"

#: Seconds of clock skew tolerated on ``exp``, ``nbf`` and ``iat`` by default
#: (``Config.auth_leeway``; the reason for the value is given there).
DEFAULT_LEEWAY = DEFAULT_AUTH_LEEWAY

#: How long a kontrol-key trust decision is cached when ``Config.verify_ttl`` is
#: 0 (the Go default, §5.4).
DEFAULT_VERIFY_TTL = 300.0

#: Distinct ``kontrolKey`` PEMs whose trust decision is remembered. A peer can
#: send any PEM it likes, so the table is bounded; legitimate deployments use a
#: handful of Kontrol keys.
TRUST_CACHE_SIZE = 256

#: Verified credentials remembered until they expire (one per active caller
#: token or kite key is plenty; older entries are evicted first).
RESULT_CACHE_SIZE = 1024


#: Message of a signature failure on a token: the Go kite's, so callers renew (§5.5).
TOKEN_EXPIRED = "token is expired"


class KeyNotTrustedError(AuthenticationError):
    """Raised by a ``verify_func`` for a Kontrol key that must not be trusted (Go's ``ErrKeyNotTrusted``).

    The refusal is cached for ``Config.verify_ttl``; other exceptions from a
    ``verify_func`` refuse the call without being cached.
    """

    def __init__(self, message: str = "kontrol key is not trusted", **kwargs: Any):
        super().__init__(message, **kwargs)


def go_duration(seconds: float) -> str:
    """Whole seconds in Go's ``time.Duration`` format (``45s``, ``2m5s``, ``1h0m3s``)."""
    total = int(seconds)
    sign = "-" if total < 0 else ""
    total = abs(total)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{sign}{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{sign}{minutes}m{secs}s"
    return f"{sign}{secs}s"


def _numeric_date(claims: dict[str, Any], name: str) -> float | None:
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise AuthenticationError(f"token is malformed: {name} is not a number")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float64
        number = math.inf
    if not math.isfinite(number):  # NaN, the infinities (Python's JSON reader takes them) and overflows: not JSON
        raise AuthenticationError(f"token is malformed: {name} is not a number")
    return number


def check_time_claims(claims: dict[str, Any], now: float, leeway: float = DEFAULT_LEEWAY) -> float | None:
    """Check ``exp``, ``iat`` and ``nbf`` (in jwt-go's order and words) with ``leeway`` seconds.

    Returns ``exp`` (``None`` when absent).
    """
    exp = _numeric_date(claims, "exp")
    iat = _numeric_date(claims, "iat")
    nbf = _numeric_date(claims, "nbf")
    if exp is not None and now > exp + leeway:
        raise AuthenticationError(f"{TOKEN_EXPIRED} by {go_duration(int(now) - int(exp))}")
    if iat is not None and now + leeway < iat:
        raise AuthenticationError("Token used before issued")
    if nbf is not None and now + leeway < nbf:
        raise AuthenticationError("token is not valid yet")
    return exp


def _string_claim(claims: dict[str, Any], name: str) -> str:
    value = claims.get(name)
    return value if isinstance(value, str) else ""


def verify_audience(kite: KiteIdentity, audience: str) -> None:
    """The default audience rule (§5.5): ``/`` matches every kite; otherwise the
    username must be equal, and environment and name equal or empty."""
    if audience == "/":
        return  # the root audience: tokens from ID-only queries
    if audience == "":
        raise AuthenticationError("invalid empty audience")
    try:
        aud = KiteIdentity.from_string(audience)
    except ValueError as exc:
        raise AuthenticationError(f"invalid audience: {exc} ({audience})") from None
    if kite.username != aud.username:
        raise AuthenticationError(f'audience: username "{aud.username}" not allowed ({audience})')
    if aud.environment and kite.environment != aud.environment:
        raise AuthenticationError(f'audience: environment "{aud.environment}" not allowed ({audience})')
    if aud.name and kite.name != aud.name:
        raise AuthenticationError(f'audience: kite "{aud.name}" not allowed ({audience})')


def token_expiry(token: str) -> float:
    """The ``exp`` of a token without verifying its signature (used by the token renewer)."""
    jwt = decode_jwt(token)
    exp = _numeric_date(jwt.claims, "exp")
    if exp is None:
        raise AuthenticationError("token: invalid exp claim")
    return exp


# --------------------------------------------------------------------------- caches


class TTLCache:
    """A small LRU map whose entries also expire at a per-entry deadline.

    Used from one gevent hub: no operation yields, so no lock is needed.
    """

    def __init__(self, maxsize: int):
        self.maxsize = maxsize
        self._data: OrderedDict[Any, tuple[Any, float]] = OrderedDict()

    def get(self, key: Any, now: float) -> Any:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, deadline = entry
        if now >= deadline:
            del self._data[key]
            return None
        self._data.move_to_end(key)
        return value

    def set(self, key: Any, value: Any, deadline: float) -> None:
        self._data[key] = (value, deadline)
        self._data.move_to_end(key)
        while len(self._data) > self.maxsize:
            self._data.popitem(last=False)

    def clear(self) -> None:
        self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


# --------------------------------------------------------------------------- the verifier


class Verifier:
    """A kite's authentication state: trust and result caches and the two authenticators.

    ``clock`` (default :func:`time.time`) gives "now" in Unix seconds; tests
    replace it with a fake clock.

    **Strict kite keys.** The Go kite lets any holder of a kite key signed by a
    trusted Kontrol key call every authenticated method. Here a kite key must
    belong to the callee's own user (``sub`` equal to ``Config.username``)
    unless the method was opened with ``Kite.allow_other_users(name)`` (or
    ``@k.method(..., other_users=True)``), or ``Config.kite_key_any_user`` is
    set (the original behaviour; Kontrol-like services that serve every user use
    it). Tokens need no such rule: their audience already names the callee's user.
    """

    def __init__(self, kite: Kite):
        self.kite = kite
        self.clock: Callable[[], float] = time.time
        self._trust = TTLCache(TRUST_CACHE_SIZE)
        self._results = TTLCache(RESULT_CACHE_SIZE)

    def clear_caches(self) -> None:
        """Forget every trust decision and verified credential."""
        self._trust.clear()
        self._results.clear()

    @property
    def leeway(self) -> float:
        return self.kite.config.auth_leeway

    # -- keys ------------------------------------------------------------------

    def kontrol_key(self) -> rsa.RSAPublicKey | None:
        """The trusted Kontrol public key (parsed once per PEM), or ``None`` when not configured."""
        pem = self.kite.config.kontrol_key
        if not pem:
            return None
        try:
            return load_public_key(pem)
        except ValueError as exc:
            raise AuthenticationError(f"kontrol key in config is invalid: {exc}") from None

    def rsa_key(self, token: JWT | str) -> rsa.RSAPublicKey:
        """The key a token must be signed with (Go's ``RSAKey``): the kite's Kontrol key,
        after checking the algorithm and that ``iss`` is this kite's Kontrol user."""
        jwt = token if isinstance(token, JWT) else decode_jwt(token)
        key = self.kontrol_key()
        if key is None:
            raise AuthenticationError("kontrol key is not set in config")
        require_rs256(jwt)
        issuer = _string_claim(jwt.claims, "iss")
        if not issuer or issuer != self.kite.config.kontrol_user:
            raise AuthenticationError(f"issuer is not trusted: {issuer}")
        return key

    def self_verify(self, pem: str) -> None:
        """The default ``verify_func``: trust only this kite's own Kontrol key (byte-identical)."""
        if pem != self.kite.config.kontrol_key:
            raise KeyNotTrustedError()

    def _trust_deadline(self, pem: str, now: float) -> float:
        """Check that ``pem`` is a trusted Kontrol key; return until when that holds."""
        config = self.kite.config
        ttl = config.verify_ttl if config.verify_ttl else DEFAULT_VERIFY_TTL
        if ttl > 0:
            cached: tuple[bool, float] | None = self._trust.get(pem, now)
            if cached is not None:
                trusted, deadline = cached
                if not trusted:
                    raise AuthenticationError("invalid kontrol key found")
                return deadline
        verify = config.verify_func or self.self_verify
        try:
            verdict = verify(pem)
        except KeyNotTrustedError as exc:
            if ttl > 0:
                self._trust.set(pem, (False, now + ttl), now + ttl)
            raise AuthenticationError(exc.message) from None
        except KiteError as exc:
            raise AuthenticationError(exc.message) from None
        except Exception as exc:
            raise AuthenticationError(str(exc) or type(exc).__name__) from None
        if verdict is False:
            if ttl > 0:
                self._trust.set(pem, (False, now + ttl), now + ttl)
            raise AuthenticationError(KeyNotTrustedError().message)
        if ttl <= 0:
            return now  # not cached: re-check next time
        self._trust.set(pem, (True, now + ttl), now + ttl)
        return now + ttl

    # -- kite keys ------------------------------------------------------------------

    def verify_kite_key(self, key: str) -> str:
        """Verify a kite key (§5.4) and return its user (``sub``)."""
        config = self.kite.config
        now = self.clock()
        snapshot = (config.kontrol_key, config.verify_func, config.verify_ttl)
        hit: tuple[str, tuple[Any, ...]] | None = self._results.get((KITE_KEY, key), now)
        if hit is not None and hit[1] == snapshot:
            return hit[0]
        jwt = decode_jwt(key)
        require_rs256(jwt)
        pem = _kontrol_key_claim(jwt)
        trusted_until = self._trust_deadline(pem, now)
        _check_signed_by(pem, jwt)
        exp = check_time_claims(jwt.claims, now, self.leeway)
        username = _string_claim(jwt.claims, "sub")
        if not username:
            raise AuthenticationError("token has no username")
        deadline = trusted_until if exp is None else min(trusted_until, exp + self.leeway)
        if deadline > now:
            self._results.set((KITE_KEY, key), (username, snapshot), deadline)
        return username

    def check_kite_key_user(self, username: str, method: str) -> None:
        """The strict rule: a kite key must belong to this kite's user unless the method is open."""
        config = self.kite.config
        if username == config.username or config.kite_key_any_user:
            return
        if method in self.kite._other_users_methods:
            return
        raise AuthenticationError(
            f'user "{username}" may not call "{method}": this kite accepts kite keys of "{config.username}" '
            "only (open the method with allow_other_users)"
        )

    def authenticate_from_kite_key(self, request: Request) -> None:
        """The ``kiteKey`` authenticator: sets ``request.username`` from a trusted kite key."""
        username = self.verify_kite_key(request.auth.key if request.auth is not None else "")
        self.check_kite_key_user(username, request.method)
        request.username = username

    # -- tokens ------------------------------------------------------------------

    def verify_token(self, token: str) -> str:
        """Verify a Kontrol token (§5.5) for this kite and return its user (``sub``)."""
        kite = self.kite
        config = kite.config
        now = self.clock()
        snapshot = (
            config.kontrol_key,
            config.kontrol_user,
            config.username,
            config.environment,
            kite.name,
            config.verify_audience_func,
        )
        hit: tuple[str, tuple[Any, ...]] | None = self._results.get((TOKEN, token), now)
        if hit is not None and hit[1] == snapshot:
            return hit[0]
        jwt = decode_jwt(token)
        key = self.rsa_key(jwt)
        try:
            verify_signature(jwt, key)
        except SignatureInvalidError:
            # Go reports this as expired so that the caller fetches a new token
            # (the usual cause is a Kontrol key rotation, §5.7).
            log.debug("token of %r has a bad signature; reported as expired", jwt.claims.get("sub"))
            raise AuthenticationError(TOKEN_EXPIRED) from None
        exp = check_time_claims(jwt.claims, now, self.leeway)
        if exp is None:
            raise AuthenticationError("token has no expiration time")
        audience = jwt.claims.get("aud")
        if not isinstance(audience, str) or not audience:
            raise AuthenticationError("token has no audience")
        username = _string_claim(jwt.claims, "sub")
        if not username:
            raise AuthenticationError("token has no username")
        self._check_audience(audience)
        self._results.set((TOKEN, token), (username, snapshot), exp + self.leeway)
        return username

    def _check_audience(self, audience: str) -> None:
        custom = self.kite.config.verify_audience_func
        if custom is None:
            verify_audience(self.kite.kite(), audience)
            return
        try:
            verdict = custom(self.kite.kite(), audience)
        except KiteError as exc:
            raise AuthenticationError(exc.message) from None
        except Exception as exc:
            raise AuthenticationError(str(exc) or type(exc).__name__) from None
        if verdict is False:
            raise AuthenticationError(f"audience: not allowed ({audience})")

    def authenticate_from_token(self, request: Request) -> None:
        """The ``token`` authenticator: sets ``request.username`` from a valid Kontrol token."""
        request.username = self.verify_token(request.auth.key if request.auth is not None else "")


def kite_key_claims(key: str, now: float | None = None, leeway: float = DEFAULT_LEEWAY) -> dict[str, Any]:
    """Self-verify a kite key (§5.1): RS256, signed by the key in its own ``kontrolKey``
    claim, time claims valid. Returns the claims; raises ``AuthenticationError``."""
    jwt = decode_jwt(key)
    require_rs256(jwt)
    _check_signed_by(_kontrol_key_claim(jwt), jwt)
    check_time_claims(jwt.claims, time.time() if now is None else now, leeway)
    return jwt.claims


def _kontrol_key_claim(jwt: JWT) -> str:
    """The ``kontrolKey`` PEM a kite key carries (§5.1)."""
    pem = jwt.claims.get("kontrolKey")
    if not isinstance(pem, str) or not pem:
        raise AuthenticationError("no kontrol key found")
    return pem


def _check_signed_by(pem: str, jwt: JWT) -> None:
    """Refuse ``jwt`` unless its RS256 signature verifies with the public key ``pem``."""
    try:
        public_key = load_public_key(pem)
    except ValueError as exc:
        raise AuthenticationError(f"invalid kontrol key: {exc}") from None
    try:
        verify_signature(jwt, public_key)
    except SignatureInvalidError:
        raise AuthenticationError("signature is invalid") from None
