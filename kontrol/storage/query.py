"""KontrolQuery: which kites a ``getKites``/``getToken`` caller asks for (PROTOCOL.md §4.5).

Pure code. Every storage backend answers queries with exactly these rules, so a
query means the same thing on memory, sqlite, etcd v3 and etcd v2:

* Empty fields mean "don't care". ``username`` is required (``Empty username
  field``), and the set fields must be a prefix of the path order
  ``username, environment, name, version, region, hostname, id``; a set field after
  an empty one is rejected with ``Invalid query. Query option is not set: <f>``,
  where ``<f>`` is the empty field nearest before it (as the Go ``GetQueryKey``
  reports it).
* A query with only ``id`` set is valid and finds that one kite (the Go etcd
  backend meant to support it but never did; postgres did).
* A non-empty ``version`` that is not a plain version is a go-version constraint
  (``>= 1.0.0, < 2.0.0``, ``~> 1.2``). Then the kites under
  username/environment/name are kept whose version satisfies it and whose
  ``/region/hostname/id`` starts with the query's ``/region/hostname/id`` (trailing
  ``/`` trimmed) as a plain string prefix, as Go's ``Kites.Filter`` does: region
  ``eu`` matches a kite in ``eu-west``.
* Without a constraint every set field must be equal.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

from kite.wire import protocol
from kite.wire.protocol import PATH_FIELDS, KiteIdentity

from .errors import InvalidQueryError
from .version import Constraints, is_version

#: Fields fixed by a constrained query before the version (the Go code queries this prefix).
_CONSTRAINT_PREFIX_LEN = PATH_FIELDS.index("version")
#: Distinct constraint strings whose parse we keep; queries repeat a handful of them.
_CONSTRAINT_CACHE_SIZE = 256


@functools.lru_cache(maxsize=_CONSTRAINT_CACHE_SIZE)
def _parse_constraints(text: str) -> Constraints | None:
    """None for a plain version, else the parsed constraint; ``InvalidQueryError`` when neither."""
    if not text or is_version(text):
        return None
    try:
        return Constraints.parse(text)
    except ValueError as e:
        raise InvalidQueryError(str(e)) from None


@dataclass(frozen=True)
class KontrolQuery(protocol.KontrolQuery):
    """:class:`kite.wire.protocol.KontrolQuery` with Kontrol's validation and matching rules."""

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_wire(cls, obj: Any) -> KontrolQuery:
        """Build from a received JSON object; missing or non-string fields become ``""``.

        Other keys (``force`` of ``getToken``, the extra keys of a full Kite) are ignored.
        """
        if not isinstance(obj, dict):
            raise InvalidQueryError("query must be an object")
        return cls(**{f: v if isinstance(v := obj.get(f), str) else "" for f in PATH_FIELDS})

    @classmethod
    def from_kite(cls, kite: KiteIdentity) -> KontrolQuery:
        """The query that names exactly this kite (all seven fields)."""
        return cls(**{f: getattr(kite, f) for f in PATH_FIELDS})

    @classmethod
    def coerce(cls, query: KontrolQuery | KiteIdentity | dict[str, Any]) -> KontrolQuery:
        """Accept a query, a kite identity or a wire object."""
        if isinstance(query, KontrolQuery):
            return query
        if isinstance(query, protocol.KontrolQuery):
            return cls(**query.to_wire())
        if isinstance(query, KiteIdentity):
            return cls.from_kite(query)
        if isinstance(query, dict):
            return cls.from_wire(query)
        raise TypeError(f"expected a KontrolQuery, KiteIdentity or dict, not {type(query).__name__}")

    # -- validation ---------------------------------------------------------------------

    @property
    def is_id_only(self) -> bool:
        """Only ``id`` is set."""
        return bool(self.id) and not any(getattr(self, f) for f in PATH_FIELDS if f != "id")

    def validate(self) -> KontrolQuery:
        """Raise :class:`InvalidQueryError` if the query is malformed; return ``self``."""
        for f in fields(self):
            if "/" in getattr(self, f.name):
                raise InvalidQueryError(f'Field "{f.name}" must not contain \'/\'')
        if self.is_id_only:
            return self
        if not self.username:
            raise InvalidQueryError("Empty username field")
        empty_field = ""
        for f in PATH_FIELDS:
            if not getattr(self, f):
                empty_field = f
            elif empty_field:
                raise InvalidQueryError(f"Invalid query. Query option is not set: {empty_field}")
        _parse_constraints(self.version)
        return self

    @property
    def constraints(self) -> Constraints | None:
        """The version constraint, or None when ``version`` is empty or a plain version."""
        return _parse_constraints(self.version)

    # -- evaluation ---------------------------------------------------------------------

    def scan_prefix(self) -> tuple[str, ...]:
        """The leading path fields a backend must match exactly to find candidates.

        With a version constraint that is username/environment/name; otherwise all
        set fields. (Not meaningful for an ID-only query.)
        """
        values = []
        for f in PATH_FIELDS:
            value = getattr(self, f)
            if not value:
                break
            values.append(value)
        if self.constraints is not None:
            values = values[:_CONSTRAINT_PREFIX_LEN]
        return tuple(values)

    def matches(self, kite: KiteIdentity) -> bool:
        """Whether ``kite`` is one of the kites this (valid) query asks for."""
        if self.is_id_only:
            return kite.id == self.id
        constraints = self.constraints
        if constraints is None:
            return all(getattr(self, f) in ("", getattr(kite, f)) for f in PATH_FIELDS)
        for f in PATH_FIELDS[:_CONSTRAINT_PREFIX_LEN]:
            if getattr(self, f) != getattr(kite, f):
                return False
        if not constraints.check(kite.version):
            return False
        wanted = "/" + f"{self.region}/{self.hostname}/{self.id}".rstrip("/")
        have = "/" + f"{kite.region}/{kite.hostname}/{kite.id}".rstrip("/")
        return have.startswith(wanted)


def get_audience(query: KontrolQuery) -> str:
    """The token audience for ``query`` (PROTOCOL.md §5.5, Go ``getAudience``).

    ``/username/environment/name`` when ``name`` is set (``//`` for any environment),
    else ``/username/environment`` when ``environment`` is set, else ``/username``;
    an ID-only query gives ``/``, the root audience.
    """
    if query.name:
        return f"/{query.username}/{query.environment}/{query.name}"
    if query.environment:
        return f"/{query.username}/{query.environment}"
    return f"/{query.username}"
