"""The storage error hierarchy.

Kontrol catches :class:`StorageError` around every storage call; it retries (or
answers ``internal error``) on :class:`StorageUnavailableError`, and passes the
messages of the validation errors through to the caller, as the Go Kontrol does.
"""

from __future__ import annotations

from typing import Any


class StorageError(Exception):
    """Root of every error raised by a storage backend."""


class StorageUnavailableError(StorageError):
    """The backend cannot be reached (connection refused, timeout, server down): retry later."""


class InvalidKiteError(StorageError, ValueError):
    """A kite identity (or its registration value) cannot be stored.

    Messages follow the Go Kontrol: ``Empty Kite field: <f>`` and
    ``Field "<f>" must not contain '/'`` (PROTOCOL.md §4.3).
    """


class InvalidQueryError(StorageError, ValueError):
    """A KontrolQuery is malformed (PROTOCOL.md §4.5), e.g. ``Empty username field``."""


class KeyPairError(StorageError):
    """Root of the key pair errors."""


class KeyPairNotFoundError(KeyPairError, LookupError):
    """No key pair has that id or public key."""

    def __init__(self, message: str = "no key pair found") -> None:
        super().__init__(message)


class KeyPairDeletedError(KeyPairError):
    """The key pair exists but was soft-deleted (Go's ``ErrKeyDeleted``).

    ``key_pair`` holds the deleted pair, so that Kontrol can still tell which one it was.
    """

    def __init__(self, key_pair: Any = None, message: str = "key pair is removed") -> None:
        super().__init__(message)
        self.key_pair = key_pair


class KeyPairExistsError(KeyPairError):
    """A key pair with the same id or the same public key is already stored."""
