"""The request a method handler receives."""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

from .arguments import Arguments

if TYPE_CHECKING:
    from .client import Client
    from .kite import Kite
    from .wire.protocol import Auth


def new_request_id() -> str:
    """16 lowercase hex characters, like the 2018 Go kite's request ids.

    For logs and tracing only (not a secret), so the cheap PRNG is enough.
    """
    return f"{random.getrandbits(64):016x}"


class Request:
    """One incoming call (Go's ``kite.Request``).

    Attributes:
        method: the method name.
        args: the call's ``withArgs`` (:class:`~kite.arguments.Arguments`).
        local_kite: the :class:`~kite.Kite` serving the call.
        client: the peer connection (:class:`~kite.Client`); ``client.kite`` is its identity,
            and handlers may call back through it with ``client.tell(...)``.
        username: the authenticated username; the claimed one when the method
            does not require authentication; ``""`` on connections this process dialed.
        auth: the received credentials (:class:`~kite.wire.protocol.Auth`) or ``None``.
        context: a dict shared by the pre-handlers, the handler and the post-handlers.
        id: a request id (16 hex characters).
    """

    __slots__ = ("method", "args", "local_kite", "client", "username", "auth", "context", "_id")

    def __init__(
        self,
        method: str,
        args: Any,
        local_kite: Kite,
        client: Client,
        username: str = "",
        auth: Auth | None = None,
    ):
        self.method = method
        self.args = Arguments(args)
        self.local_kite = local_kite
        self.client = client
        self.username = username
        self.auth = auth
        self.context: dict[str, Any] = {}
        self._id = ""

    @property
    def id(self) -> str:
        """The request id, made on first use (most calls never need one)."""
        if not self._id:
            self._id = new_request_id()
        return self._id

    def __repr__(self) -> str:
        return f"<Request {self.method} id={self.id} username={self.username!r}>"
