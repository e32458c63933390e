"""Helpers for testing kites with authentication on (Go's ``testutil``).

Everything is signed with the throw-away keys of :mod:`kite.testkeys`::

    from kite import Auth, testutil

    with testutil.serve(testutil.new_kite("math", username="alice")) as math:
        math.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
        caller = testutil.new_kite("caller", username="alice")
        with caller.new_client(math.url) as c:
            c.auth = Auth("kiteKey", caller.kite_key())
            assert c.tell("square", 3) == 9
            c.auth = Auth("token", testutil.new_token("bob", testutil.audience_for(math)))
            assert c.tell("square", 4) == 16

* :func:`new_kite_key` / :func:`write_kite_key` - a kite.key for a test user;
* :func:`new_token` - a Kontrol-style token; :func:`token_source` - a token
  source for :class:`kite.kontrolclient.tokenrenewer.TokenRenewer`;
* :func:`new_config` / :func:`new_kite` - a config or kite trusting the test Kontrol;
* :func:`serve` - run a kite on 127.0.0.1 for the duration of a ``with`` block.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import gevent
import jwt as pyjwt

from . import kitekey, testkeys
from .config import Config
from .testkeys import KeyPair

if TYPE_CHECKING:
    from gevent.event import Event

    from .client import Client
    from .kite import Kite

#: Username of test kite keys unless told otherwise.
TEST_USERNAME = "testuser"
#: ``iss`` of test kite keys and tokens: the test Kontrol's username (as in Go captures).
KONTROL_USER = "kontrol"
#: ``kontrolURL`` of test kite keys (nothing listens there unless a test starts a Kontrol).
KONTROL_URL = "http://127.0.0.1:4000/kite"
#: Default token lifetime, as Kontrol's ``TokenTTL`` (48 h).
TOKEN_TTL = 48 * 3600.0
#: How far back ``nbf`` is set, as Kontrol's 2016 ``TokenLeeway`` (1 min).
TOKEN_LEEWAY = 60.0
#: Seconds :func:`serve` waits for a kite to listen.
SERVE_TIMEOUT = 10.0


def sign(claims: dict[str, Any], key_pair: KeyPair | None = None, algorithm: str = "RS256") -> str:
    """A JWT over ``claims`` signed by ``key_pair`` (default: the test Kontrol pair)."""
    pair = key_pair or testkeys.key_pair()
    return pyjwt.encode(claims, pair.private_key, algorithm=algorithm)


def new_kite_key(
    username: str = TEST_USERNAME,
    *,
    kontrol_user: str = KONTROL_USER,
    kontrol_url: str = KONTROL_URL,
    key_pair: KeyPair | None = None,
    kontrol_key: str | None = None,
    ttl: float | None = None,
    now: float | None = None,
    **extra: Any,
) -> str:
    """A kite key for ``username`` as Kontrol issues them (§5.1), signed by ``key_pair``.

    ``kontrol_key`` overrides the ``kontrolKey`` claim (default: the pair's public
    key); ``ttl`` adds an ``exp`` (Kontrol sets none); ``extra`` adds or replaces claims.
    """
    pair = key_pair or testkeys.key_pair()
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": kontrol_user,
        "sub": username,
        "iat": issued,
        "jti": str(uuid.uuid4()),
        "kontrolURL": kontrol_url,
        "kontrolKey": pair.public_pem if kontrol_key is None else kontrol_key,
    }
    if ttl is not None:
        claims["exp"] = int(issued + ttl)
    claims.update(extra)
    return sign({k: v for k, v in claims.items() if v is not None}, pair)


def write_kite_key(directory: str, username: str = TEST_USERNAME, **kwargs: Any) -> str:
    """Write a new kite key for ``username`` to ``directory/kite.key``; returns the path.

    Point ``KITE_HOME`` at ``directory`` and ``Kite(name, version)`` picks it up.
    """
    return kitekey.write(new_kite_key(username, **kwargs), os.path.join(directory, kitekey.KITE_KEY_FILE_NAME))


def audience_for(kite: Kite) -> str:
    """The audience Kontrol puts in tokens for exactly this kite: ``/username/environment/name``."""
    return f"/{kite.config.username}/{kite.config.environment}/{kite.name}"


def new_token(
    username: str = TEST_USERNAME,
    audience: str = "/",
    *,
    issuer: str = KONTROL_USER,
    ttl: float = TOKEN_TTL,
    key_pair: KeyPair | None = None,
    now: float | None = None,
    **extra: Any,
) -> str:
    """A Kontrol-style token (§5.5) for caller ``username`` to kites in ``audience``.

    ``iat`` = now, ``nbf`` = now - :data:`TOKEN_LEEWAY`, ``exp`` = now + ``ttl``
    (whole seconds; a short ``ttl`` makes renewal observable in tests).
    ``extra`` adds or replaces claims; a ``None`` value removes one.
    """
    issued = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "iss": issuer,
        "sub": username,
        "aud": audience,
        "iat": issued,
        "nbf": int(issued - TOKEN_LEEWAY),
        "exp": int(issued + ttl),
        "jti": str(uuid.uuid4()),
    }
    claims.update(extra)
    return sign({k: v for k, v in claims.items() if v is not None}, key_pair)


def token_source(
    username: str = TEST_USERNAME, audience: str = "/", ttl: float = TOKEN_TTL, **kwargs: Any
) -> Callable[[Client], str]:
    """A token source for :class:`~kite.kontrolclient.tokenrenewer.TokenRenewer` minting fresh test tokens.

    The returned function records every token it issued in its ``issued`` list.
    """
    issued: list[str] = []

    def source(client: Client) -> str:
        token = new_token(username, audience, ttl=ttl, **kwargs)
        issued.append(token)
        return token

    source.issued = issued  # type: ignore[attr-defined]
    return source


def new_config(username: str = TEST_USERNAME, key_pair: KeyPair | None = None, **kite_key_kwargs: Any) -> Config:
    """A config as if read from a kite.key of ``username`` (kite key, Kontrol key and user set),
    listening on ``127.0.0.1`` with an ephemeral port."""
    config = Config()
    config.apply_kite_key(new_kite_key(username, key_pair=key_pair, **kite_key_kwargs))
    config.ip, config.port = "127.0.0.1", 0
    return config


def new_kite(
    name: str = "testkite",
    version: str = "1.0.0",
    username: str = TEST_USERNAME,
    *,
    key_pair: KeyPair | None = None,
    **config: Any,
) -> Kite:
    """A kite with authentication on, trusting the test Kontrol, on 127.0.0.1:0.

    ``config`` sets further :class:`~kite.config.Config` fields (``environment="prod"``).
    """
    from .kite import Kite

    c = new_config(username, key_pair=key_pair)
    for field, value in config.items():
        if not hasattr(c, field):
            raise TypeError(f"Config has no field {field!r}")
        setattr(c, field, value)
    return Kite(name, version, config=c)


@contextlib.contextmanager
def serve(kite: Kite, timeout: float = SERVE_TIMEOUT) -> Iterator[Kite]:
    """Run ``kite`` in a greenlet until the block ends, then close it."""
    g = gevent.spawn(kite.run)
    try:
        ready = kite.server_ready_notify()
        waitables: list[Event | gevent.Greenlet[[], None]] = [ready, g]
        gevent.wait(waitables, timeout=timeout, count=1)
        if not ready.is_set():
            if g.dead and g.exception is not None:
                raise g.exception
            raise RuntimeError(f"{kite!r} did not listen within {timeout} s")
        yield kite
    finally:
        kite.close()
        g.join(timeout=5)
        if not g.dead:
            g.kill(timeout=5)
