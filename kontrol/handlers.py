"""Kontrol's kite methods: register, registerMachine, getKites, getToken, getKey (PROTOCOL.md §7.1-7.6)."""

from __future__ import annotations

import functools
import logging
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from kite import AuthenticationError, GenericError, KiteError, Request
from kite.auth import kite_key_claims
from kite.wire.jws import decode_jwt
from kite.wire.protocol import KiteIdentity

from .registry import WEBSOCKET
from .storage import (
    InvalidKiteError,
    InvalidQueryError,
    KeyPair,
    KeyPairDeletedError,
    KeyPairNotFoundError,
    KontrolQuery,
    StorageError,
    get_audience,
)

if TYPE_CHECKING:
    from .kontrol import Kontrol

log = logging.getLogger("kontrol.handlers")

#: Kontrol calls ``kite.heartbeat`` back with this timeout (Go: 4 s).
HEARTBEAT_CALL_TIMEOUT = 4.0


def _first_arg(r: Request) -> Any:
    return r.args.one().raw


def _require_kite_key(r: Request) -> None:
    if r.auth is None or r.auth.type != "kiteKey":
        raise AuthenticationError(f"Unexpected authentication type: {r.auth.type if r.auth else ''}")


def validate_url(url: Any) -> str:
    """A registered URL must be a non-empty absolute URL."""
    if not isinstance(url, str) or not url:
        raise GenericError("empty url")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. "http://[::1": an unclosed IPv6 bracket
        raise GenericError(f"invalid url: {url!r}") from None
    if not parts.scheme or not parts.netloc:
        raise GenericError(f"invalid url: {url!r}")
    return url


@functools.lru_cache(maxsize=4096)
def _claims_of(kite_key: str) -> dict[str, Any]:
    """A verified kite key's claims, decoded once per key (a fleet registers with few keys, again
    and again). Shared: callers must not change the dict."""
    return decode_jwt(kite_key).claims


def resolve_key_pair(kontrol: Kontrol, kite_key: str) -> tuple[KeyPair, dict[str, str]]:
    """The pair a kite key belongs to, re-signing the key if that pair was retired (§5.7, §7.2).

    Returns the pair to register under and the extra RegisterResult fields
    (``kiteKey``/``publicKey``) to hand back. The key is verified by Kontrol's verifier,
    whose cached verdict the caller's authentication left (no second RSA check per register).
    """
    kontrol.kite.verifier.verify_kite_key(kite_key)
    claims = _claims_of(kite_key)
    public = claims.get("kontrolKey", "")
    try:
        return kontrol.keypairs.by_public(public), {}
    except KeyPairDeletedError:
        new_key, pair = kontrol.keypairs.resign_kite_key(claims)
        return pair, {"kiteKey": new_key, "publicKey": pair.public}
    except KeyPairNotFoundError:
        raise GenericError("no valid authentication key found") from None


def handle_register(kontrol: Kontrol, r: Request) -> dict[str, Any]:
    """``register [{"url"}]`` over the kite's own connection; Kontrol then drives ``kite.heartbeat``."""
    _require_kite_key(r)
    arg = _first_arg(r)
    url = validate_url(arg.get("url") if isinstance(arg, dict) else None)
    try:
        pair, extra = resolve_key_pair(kontrol, r.auth.key)
    except StorageError as exc:  # the key pairs could not be read: not the caller's fault, nor its business
        log.error("register %s: key pair lookup: %s", r.username, exc)
        raise GenericError("internal error - register") from None
    kite = KiteIdentity(**r.client.kite.to_wire())
    kite.username = r.username
    try:
        kite.validate()
    except ValueError as exc:
        raise GenericError(str(exc)) from None
    try:
        kontrol.registry.register(kite, url, pair.id, WEBSOCKET)
    except InvalidKiteError as exc:
        raise GenericError(str(exc)) from None
    except StorageError as exc:
        log.error("register %s: %s", kite, exc)
        raise GenericError("internal error - register") from None
    kontrol.watch_connection(r.client, kite, url, pair.id)
    return {"url": url, "heartbeatInterval": 0, **extra}


def handle_get_kites(kontrol: Kontrol, r: Request) -> dict[str, Any]:
    """``getKites [{"query", "watchCallback"?}]``: matching kites with tokens for the caller."""
    arg = _first_arg(r)
    if not isinstance(arg, dict):
        raise GenericError("getKites expects an object with a query")
    query = _query(arg.get("query"))
    audience = get_audience(query)
    callback = arg.get("watchCallback")
    # The watch starts before the read: a kite that comes or goes in between is then in the
    # events (a kite in both arrives twice as REGISTER), never in neither.
    watcher_id = kontrol.start_watch(r, query, audience, callback) if callable(callback) else None
    try:
        records = kontrol.storage.get(query)
    except StorageError as exc:
        if watcher_id is not None:
            kontrol.cancel_watch(r.client, watcher_id)
        raise GenericError(str(exc)) from None
    kites = []
    for record in records:
        token = kontrol.tokens.token(audience, r.username, kontrol.signing_pair(record.key_id))
        entry: dict[str, Any] = {"kite": record.kite.to_wire(), "url": record.url, "token": token}
        if record.key_id:
            entry["keyId"] = record.key_id
        kites.append(entry)
    result: dict[str, Any] = {"kites": kites}
    if watcher_id is not None:
        result["watcherID"] = watcher_id
    return result


def handle_cancel_watcher(kontrol: Kontrol, r: Request) -> None:
    """``cancelWatcher [id]``: stop a watch started by ``getKites``."""
    kontrol.cancel_watch(r.client, r.args.one().must_string())


def handle_get_token(kontrol: Kontrol, r: Request) -> str:
    """``getToken [query]``: a token for the one kite the query names (``force`` skips the cache)."""
    arg = _first_arg(r)
    query = _query(arg)
    try:
        records = kontrol.storage.get_by_id(query.id) if query.is_id_only else kontrol.storage.get(query)
    except StorageError as exc:
        raise GenericError(str(exc)) from None
    if records is None:
        records = []
    elif not isinstance(records, list):
        records = [records]
    if not records:
        raise GenericError("no kites found")
    if len(records) > 1:
        raise GenericError("query matches more than one kite")
    force = bool(arg.get("force")) if isinstance(arg, dict) else False
    pair = kontrol.signing_pair(records[0].key_id)
    return kontrol.tokens.token(get_audience(query), r.username, pair, force=force)


def handle_get_key(kontrol: Kontrol, r: Request) -> str:
    """``getKey``: the public key the caller should trust (the current one after a rotation)."""
    _require_kite_key(r)
    claims = kite_key_claims(r.auth.key, leeway=kontrol.kite.config.auth_leeway)
    public = claims.get("kontrolKey")
    if not public:
        raise GenericError("public key is not passed")
    try:
        return kontrol.keypairs.by_public(public).public
    except KeyPairDeletedError:
        return kontrol.keypairs.current().public
    except KeyPairNotFoundError:
        raise GenericError("no valid authentication key found") from None


def handle_register_machine(kontrol: Kontrol, r: Request) -> str:
    """``registerMachine [{"authType"}]``: a new kite key for the caller's claimed user, if the
    machine authenticator lets it through (the default refuses everyone, §7.6)."""
    arg = _first_arg(r)
    if not isinstance(arg, dict):
        raise GenericError("registerMachine expects an object")
    auth_type = next((v for k, v in arg.items() if k.lower() == "authtype"), "")
    username = r.client.kite.username
    if not username:
        raise GenericError("cannot register a machine without a username")
    address = _host(r.client.remote_addr)
    limit = kontrol.machine_rate_limit
    limit.begin(address, username)  # RequestLimitError after too many failures (password guessing)
    try:
        kontrol.machine_authenticator(str(auth_type or ""), r)
    except KiteError as exc:
        log.info("registerMachine from %s for %r refused: %s", address, username, exc.message)
        raise GenericError(f"cannot authenticate user: {exc.message}") from None
    except Exception as exc:
        log.info("registerMachine from %s for %r refused: %s", address, username, exc)
        raise GenericError(f"cannot authenticate user: {exc}") from None
    limit.succeeded(address, username)
    return kontrol.keypairs.new_kite_key(username, kontrol.username, kontrol.kontrol_url)


def _host(remote_addr: str) -> str:
    """The host part of a ``host:port`` remote address (``[v6]:port`` too): one bucket per host, not per port."""
    host, sep, port = remote_addr.rpartition(":")
    if not sep or not port.isdigit():
        return remote_addr
    return host.strip("[]")


def _query(obj: Any) -> KontrolQuery:
    try:
        return KontrolQuery.from_wire(obj).validate()
    except InvalidQueryError as exc:
        raise GenericError(str(exc)) from None
