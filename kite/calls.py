"""Serving one incoming call (PROTOCOL.md §4, §5.2): from a dnode ``method`` and its
arguments to the reply through ``responseCallback``.

The call's single argument is the options object (``kite``, ``authentication``,
``withArgs``, ``responseCallback``). The method is looked up, the peer's identity
is taken at its first call, the credentials are checked by the authenticator for
their type, the handler chain runs, and the result or the error is sent back as
``{"error", "result"}``. Every failure reaches the caller as a typed kite error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .errors import (
    AuthenticationError,
    GenericError,
    KiteError,
    LocalProtocolError,
    MethodNotFoundError,
    SendError,
    to_kite_error,
)
from .request import Request
from .wire.protocol import Auth, KiteIdentity

if TYPE_CHECKING:
    from .client import Client
    from .kite import Kite


def serve_call(kite: Kite, client: Client, method_name: str, arguments: list[Any]) -> KiteError | None:
    """Run ``method_name`` of ``kite`` for ``client`` with the dnode ``arguments`` and reply.

    Returns the error replied with, ``None`` after a result (what :mod:`kite.metrics` counts).
    """
    options = arguments[0] if arguments and isinstance(arguments[0], dict) else None
    respond = options.get("responseCallback") if options is not None else None
    if not callable(respond):
        respond = None
    method = kite._methods.get(method_name)
    if method is None:
        error: KiteError = MethodNotFoundError(f"Method not found: {method_name}")
        reply(respond, error, None)
        return error
    if options is None or len(arguments) != 1:
        error = GenericError("invalid call: arguments must be one options object")
        reply(respond, error, None)
        return error
    if not client._dialed and not client._first_request_done:
        client._first_request_done = True
        client.kite = KiteIdentity.from_wire(options.get("kite"))
        for fn in kite._on_first_request:
            client._run_handler(fn)
    auth = options.get("authentication")
    request = Request(
        method_name,
        options.get("withArgs"),
        kite,
        client,
        username="" if client._dialed else client.kite.username,
        auth=_auth_from_wire(auth),
    )
    try:
        if method.auth_required and not client._dialed:
            authenticate(kite, request)
        result = method.serve(request, kite._pre_handlers, kite._post_handlers)
    except Exception as exc:
        if not isinstance(exc, KiteError):
            kite.log.debug("method %s failed: %r", method_name, exc)
        error = to_kite_error(exc)
        reply(respond, error, None)
        return error
    reply(respond, None, result)
    return None


def refuse_call(arguments: list[Any], error: KiteError) -> None:
    """Answer a call with ``error`` without running it (a kite that is shutting down)."""
    options = arguments[0] if arguments and isinstance(arguments[0], dict) else None
    respond = options.get("responseCallback") if options is not None else None
    reply(respond if callable(respond) else None, error, None)


def _auth_from_wire(auth: Any) -> Auth | None:
    """The call's ``authentication`` object; a field that is not a string counts as empty
    (Go's decoder refuses it; ``str()`` of a hostile nested value could blow the stack)."""
    if not isinstance(auth, dict):
        return None
    type_, key = auth.get("type"), auth.get("key")
    return Auth(type_ if isinstance(type_, str) else "", key if isinstance(key, str) else "")


def authenticate(kite: Kite, request: Request) -> None:
    """Check the request's credentials with ``kite``'s authenticator for their type (§5.2).

    Sets the peer's username from the authenticator's verdict; raises
    :class:`~kite.errors.AuthenticationError` naming the type and the reason.
    """
    auth = request.auth
    if auth is None:
        raise AuthenticationError("No authentication information is provided")
    authenticator = kite.authenticators.get(auth.type)
    if authenticator is None:
        raise AuthenticationError(f"Unknown authentication type: {auth.type}")
    try:
        authenticator(request)
    except Exception as exc:
        reason = exc.message if isinstance(exc, KiteError) else str(exc)
        raise AuthenticationError(f"{auth.type}: {reason}") from None
    request.client.kite.username = request.username


def reply(respond: Callable[..., None] | None, error: KiteError | None, result: Any) -> None:
    """Send ``{"error", "result"}`` through ``respond``; a result that cannot be encoded
    becomes a ``genericError``, a caller that has gone is ignored."""
    if respond is None:
        return
    response = {"error": None if error is None else error.to_wire(), "result": result}
    try:
        respond(response)
    except (LocalProtocolError, RecursionError) as exc:  # RecursionError: a result nested too deeply to scrub
        respond({"error": GenericError(f"cannot encode result: {exc}").to_wire(), "result": None})
    except SendError:
        pass  # the caller has gone; nothing to tell
