"""Who may get a kite key through ``registerMachine`` (PROTOCOL.md §7.6).

The original's stock Kontrol refuses everyone (its hooks are unset). Ours refuses by
default too (:func:`~kontrol.kontrol.refuse_machines`); :func:`password_authenticator`
opens it to callers who know a shared machine password, optionally only for some users.
The password travels in the call: serve Kontrol over TLS when it is used beyond loopback.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Collection

from kite import Request

#: The ``authType`` a password-authenticated ``registerMachine`` carries.
PASSWORD_AUTH = "password"


def password_authenticator(password: str, users: Collection[str] = ()) -> Callable[[str, Request], None]:
    """A machine authenticator that lets through ``registerMachine [{"authType": "password",
    "password": P}]`` when P is ``password`` (compared in constant time) and, if ``users`` is
    not empty, the caller's username is one of them. Raises ``ValueError`` for an empty password."""
    if not password:
        raise ValueError("the machine password is empty")
    expected = password.encode()
    allowed = frozenset(users)

    def authenticate(auth_type: str, request: Request) -> None:
        if auth_type.lower() != PASSWORD_AUTH:
            raise PermissionError(f'authType must be "{PASSWORD_AUTH}", got {auth_type!r}')
        arg = request.args[0] if len(request.args) else None
        given = arg.get("password") if isinstance(arg, dict) else None
        if not isinstance(given, str) or not hmac.compare_digest(given.encode(), expected):
            raise PermissionError("wrong machine password")
        username = request.client.kite.username
        if allowed and username not in allowed:
            raise PermissionError(f"user {username!r} may not register machines here")

    return authenticate
