"""Kite identity and the shapes of kite-level messages, as pure code.

A kite is named by seven strings (PROTOCOL.md §4.1); its path form is
``/username/environment/name/version/region/hostname/id`` (§4.2).
"""

from __future__ import annotations

import math
import re
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass, fields
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
        # Spelled out: dataclasses.asdict deep-copies field by field, ~30x slower (10 µs), and Kontrol
        # builds one of these per kite in every getKites answer.
        return {"name": self.name, "username": self.username, "id": self.id, "environment": self.environment,
                "region": self.region, "version": self.version, "hostname": self.hostname}

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


@dataclass(frozen=True)
class KontrolQuery:
    """A Kontrol query (§4.5): the seven identity fields, ``""`` meaning "any".

    Kontrol's storage extends it with the matching rules (``kontrol.storage.query``).

    Fields are in Go's order (``username, environment, name, version, region,
    hostname, id``) and all seven are always sent, as the Go client does.
    """

    username: str = ""
    environment: str = ""
    name: str = ""
    version: str = ""
    region: str = ""
    hostname: str = ""
    id: str = ""

    def to_wire(self) -> dict[str, str]:
        """The JSON object: all seven keys, Go's order."""
        return {"username": self.username, "environment": self.environment, "name": self.name,
                "version": self.version, "region": self.region, "hostname": self.hostname, "id": self.id}

    @classmethod
    def from_any(cls, query: Any = None, **fields: str) -> KontrolQuery:
        """A query from a :class:`KontrolQuery`, a :class:`KiteIdentity`, a dict, ``None``,
        and/or keyword fields (which win): ``KontrolQuery.from_any(name="math", username="alice")``.

        ``None`` values count as empty. Raises ``ValueError`` for an unknown field and
        ``TypeError`` for a non-string value or an unsupported query type.
        """
        if query is None:
            values: dict[str, Any] = {}
        elif isinstance(query, (KontrolQuery, KiteIdentity)):
            values = query.to_wire()
        elif isinstance(query, Mapping):
            values = dict(query)
        else:
            raise TypeError(f"a query must be a dict, KiteIdentity or KontrolQuery, not {type(query).__name__}")
        values.update(fields)
        unknown = sorted(set(values) - set(PATH_FIELDS))
        if unknown:
            raise ValueError(f"unknown query field(s) {', '.join(map(repr, unknown))}; use {', '.join(PATH_FIELDS)}")
        for key, value in values.items():
            if value is None:
                values[key] = ""
            elif not isinstance(value, str):
                raise TypeError(f"query field {key!r} must be a string, not {type(value).__name__}")
        return cls(**values)

    def __str__(self) -> str:
        return "/" + "/".join(getattr(self, f) for f in PATH_FIELDS)


@dataclass
class RegisterResult:
    """Kontrol's answer to ``register`` (websocket or HTTP, §7.2 and §7.7).

    ``heartbeat_interval`` is whole seconds (0 over websocket, where Kontrol
    drives ``kite.heartbeat`` itself); ``kite_key``/``public_key`` are set after
    a Kontrol key rotation (§5.7); ``err`` carries an HTTP registration error.
    """

    url: str = ""
    heartbeat_interval: int = 0
    kite_key: str = ""
    public_key: str = ""
    err: str = ""

    def to_wire(self) -> dict[str, Any]:
        """The JSON object: ``url`` and ``heartbeatInterval`` always, the rest only when non-empty."""
        out: dict[str, Any] = {}
        if self.err:
            out["err"] = self.err
        out["url"] = self.url
        out["heartbeatInterval"] = self.heartbeat_interval
        if self.public_key:
            out["publicKey"] = self.public_key
        if self.kite_key:
            out["kiteKey"] = self.kite_key
        return out

    @classmethod
    def from_wire(cls, obj: Any) -> RegisterResult:
        """Build from a received object; raises ``ValueError`` when it is not one."""
        if not isinstance(obj, dict):
            raise ValueError(f"register result must be an object, got {type(obj).__name__}")
        out = cls()
        for key, attr in (("url", "url"), ("kiteKey", "kite_key"), ("publicKey", "public_key"), ("err", "err")):
            value = obj.get(key)
            if value is None:
                continue
            if not isinstance(value, str):
                raise ValueError(f"register result field {key!r} must be a string")
            setattr(out, attr, value)
        interval = obj.get("heartbeatInterval")
        if interval is not None:
            if (
                isinstance(interval, bool)
                or not isinstance(interval, (int, float))
                or not 0 <= interval < math.inf  # NaN and the infinities fail too: int() refuses them
            ):
                raise ValueError(f"register result heartbeatInterval must be a non-negative number, got {interval!r}")
            out.heartbeat_interval = int(interval)
        return out


def parse_get_kites_result(raw: Any) -> tuple[list[dict[str, Any]], str]:
    """The entries and the ``watcherID`` (or ``""``) of a ``getKites`` result (§7.3).

    Each entry is ``{"kite": {...}, "url": str, "token": str}``; a missing or null
    ``kites`` means none. Raises ``ValueError`` naming what is malformed.
    """
    if not isinstance(raw, dict):
        raise ValueError(f"result must be an object, got {type(raw).__name__}")
    kites = raw.get("kites")
    if kites is None:
        kites = []
    if not isinstance(kites, list):
        raise ValueError("result.kites must be an array")
    for entry in kites:
        if not (
            isinstance(entry, dict)
            and isinstance(entry.get("kite"), dict)
            and isinstance(entry.get("url"), str)
            and isinstance(entry.get("token"), str)
        ):
            raise ValueError(f"malformed kite entry {reprlib.repr(entry)}")  # bounded: entries may nest deeply
    watcher_id = raw.get("watcherID")
    return list(kites), watcher_id if isinstance(watcher_id, str) else ""
