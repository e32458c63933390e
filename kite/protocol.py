"""Kite identity and the shapes of kite-level messages, as pure code.

A kite is named by seven strings (PROTOCOL.md §4.1); its path form is
``/username/environment/name/version/region/hostname/id`` (§4.2).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, fields
from typing import Any

#: The seven identity fields in Go's JSON order.
KITE_FIELDS = ("name", "username", "id", "environment", "region", "version", "hostname")
#: The same fields in path (query) order, general to specific.
PATH_FIELDS = ("username", "environment", "name", "version", "region", "hostname", "id")

_VERSION_RE = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass
class KiteIdentity:
    """The seven-field identity of a kite (``protocol.Kite`` in Go)."""

    name: str = ""
    username: str = ""
    id: str = ""
    environment: str = ""
    region: str = ""
    version: str = ""
    hostname: str = ""

    def to_wire(self) -> dict[str, str]:
        """The JSON object, all seven keys, Go's order."""
        return asdict(self)

    @classmethod
    def from_wire(cls, obj: Any) -> KiteIdentity:
        """Build from a received object; missing or non-string fields become ``""``."""
        if not isinstance(obj, dict):
            return cls()
        return cls(**{f: v if isinstance(v := obj.get(f), str) else "" for f in KITE_FIELDS})

    def __str__(self) -> str:
        return "/" + "/".join(getattr(self, f) for f in PATH_FIELDS)

    @classmethod
    def from_string(cls, path: str) -> KiteIdentity:
        """Parse the path form (§4.2): at most 7 parts, missing trailing parts empty."""
        if not path.startswith("/"):
            raise ValueError(f"invalid kite path {path!r}: must start with '/'")
        parts = path[1:].split("/", len(PATH_FIELDS) - 1)
        parts += [""] * (len(PATH_FIELDS) - len(parts))
        return cls(**dict(zip(PATH_FIELDS, parts, strict=False)))

    def validate(self) -> None:
        """Raise ``ValueError`` naming the first empty or slash-containing field (§4.3)."""
        for f in fields(self):
            value = getattr(self, f.name)
            if not value:
                raise ValueError(f"Empty Kite field: {f.name}")
            if "/" in value:
                raise ValueError(f'Field "{f.name}" must not contain \'/\'')


def validate_name_version(name: str, version: str) -> None:
    """The checks of ``kite.New``: a non-empty name and a 3-part version."""
    if not name:
        raise ValueError("kite name must not be empty")
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise ValueError(f"kite version must be a 3-digit semantic version like 1.0.0, not {version!r}")


@dataclass
class Auth:
    """Credentials sent with every call: ``{"type": ..., "key": ...}`` (§5.2)."""

    type: str
    key: str

    def to_wire(self) -> dict[str, str]:
        return {"type": self.type, "key": self.key}
