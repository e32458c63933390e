"""Versions and version constraints with the semantics of ``hashicorp/go-version``.

Kontrol queries may carry a version constraint such as ``>= 1.0.0, < 2.0.0`` or
``~> 1.2`` (PROTOCOL.md §4.5); the Go Kontrol evaluates them with go-version, so we
follow its rules exactly rather than PEP 440's:

* a version is ``v?N(.N)*`` plus an optional pre-release (``-beta.1``, or ``beta``
  directly after the digits) and optional metadata (``+build``); fewer than three
  segments are padded with zeros (``1.2`` == ``1.2.0``);
* a constraint string is a comma-separated list, each ``<op> <version>`` with
  ``op`` one of ``= != > < >= <= ~>`` or nothing (meaning ``=``); all must hold;
* a pre-release version only satisfies a comparison whose own version is a
  pre-release of the same segments (``>= 1.0.0`` does not match ``1.1.0-beta``);
* ``~> 1.2`` means ``>= 1.2, < 2.0``; ``~> 1.2.3`` means ``>= 1.2.3, < 1.3.0``.

Pure code: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass

# The version grammar of go-version (VersionRegexpRaw), written for Python's re.
# Groups: 1 = the dotted numbers, 4 = a pre-release after "-" starting with a digit,
# 7 = a pre-release starting with a letter (dash optional), 10 = metadata after "+".
# Go's ``[0-9]+[0-9A-Za-z\-~]*`` is written ``[0-9][0-9A-Za-z\-~]*`` (the same strings, the
# same groups): RE2 runs in linear time, but Python's backtracking tried every split of
# the run between the two classes, quadratic time on a long non-version (a 16 KB query
# version held Kontrol's hub for ~50 s).
_VERSION_RAW = (
    r"v?([0-9]+(\.[0-9]+)*?)"
    r"(-([0-9][0-9A-Za-z\-~]*(\.[0-9A-Za-z\-~]+)*)|(-?([A-Za-z\-~][0-9A-Za-z\-~]*(\.[0-9A-Za-z\-~]+)*)))?"
    r"(\+([0-9A-Za-z\-~]+(\.[0-9A-Za-z\-~]+)*))??"
)
_VERSION_RE = re.compile(_VERSION_RAW)
# Go's RE2 "\s" is ASCII whitespace without \v; spell it out so Python's Unicode \s
# does not accept more than Go does. Longer operators first so ">=" is not read as ">".
# The operator and the blanks after it form one optional group: two blank runs around an
# empty operator would again be split every way on a long run of blanks (group 1 is then None).
_WS = r"[\t\n\f\r ]*"
_CONSTRAINT_RE = re.compile(rf"{_WS}(?:(>=|<=|!=|~>|>|<|=){_WS})?({_VERSION_RAW}){_WS}")
_INT64_RE = re.compile(r"[+-]?[0-9]+")
# go-version stores segments as int64; a larger number is a parse error there.
_INT64_MAX = 2**63 - 1
# go-version pads versions to at least MAJOR.MINOR.PATCH.
_MIN_SEGMENTS = 3


def _parse_int64(text: str) -> int | None:
    """``strconv.ParseInt(text, 10, 64)``: the value, or None when Go would fail."""
    if not _INT64_RE.fullmatch(text):
        return None
    value = int(text)
    return value if -_INT64_MAX - 1 <= value <= _INT64_MAX else None


@dataclass(frozen=True)
class Version:
    """A parsed version (go-version ``Version``)."""

    segments: tuple[int, ...]
    #: How many segments were written (``1.2`` -> 2), before padding to three.
    specified: int
    prerelease: str
    metadata: str
    original: str

    @classmethod
    def parse(cls, text: str) -> Version:
        """Parse ``text``; raise ``ValueError("Malformed version: <text>")`` if it is not a version."""
        m = _VERSION_RE.fullmatch(text)
        if m is None:
            raise ValueError(f"Malformed version: {text}")
        parts = m.group(1).split(".")
        segments: list[int] = []
        for part in parts:
            value = _parse_int64(part)
            if value is None:
                raise ValueError(f"error parsing version: {part!r} is out of range")
            segments.append(value)
        segments += [0] * (_MIN_SEGMENTS - len(segments))
        pre = m.group(7) or m.group(4) or ""
        return cls(tuple(segments), len(parts), pre, m.group(10) or "", text)

    def __str__(self) -> str:
        text = ".".join(str(s) for s in self.segments)
        if self.prerelease:
            text += "-" + self.prerelease
        if self.metadata:
            text += "+" + self.metadata
        return text

    def compare(self, other: Version) -> int:
        """-1, 0 or 1 as ``self`` is older than, equal to or newer than ``other``."""
        if str(self) == str(other):
            return 0
        if self.segments == other.segments:
            if not self.prerelease and not other.prerelease:
                return 0
            if not self.prerelease:
                return 1
            if not other.prerelease:
                return -1
            return _compare_prereleases(self.prerelease, other.prerelease)
        mine, theirs = self.segments, other.segments
        for i in range(max(len(mine), len(theirs))):
            if i >= len(mine):
                return -1 if any(theirs[i:]) else 0
            if i >= len(theirs):
                return 1 if any(mine[i:]) else 0
            if mine[i] != theirs[i]:
                return -1 if mine[i] < theirs[i] else 1
        return 0


def _compare_part(mine: str, theirs: str) -> int:
    if mine == theirs:
        return 0
    mine_int, theirs_int = _parse_int64(mine), _parse_int64(theirs)
    if mine == "":
        return -1 if theirs_int is not None else 1
    if theirs == "":
        return 1 if mine_int is not None else -1
    if mine_int is not None and theirs_int is None:
        return -1
    if mine_int is None and theirs_int is not None:
        return 1
    if mine_int is None and theirs_int is None:
        return 1 if mine > theirs else -1
    assert mine_int is not None and theirs_int is not None
    return 1 if mine_int > theirs_int else -1


def _compare_prereleases(mine: str, theirs: str) -> int:
    if mine == theirs:
        return 0
    mine_parts, theirs_parts = mine.split("."), theirs.split(".")
    for i in range(max(len(mine_parts), len(theirs_parts))):
        a = mine_parts[i] if i < len(mine_parts) else ""
        b = theirs_parts[i] if i < len(theirs_parts) else ""
        result = _compare_part(a, b)
        if result:
            return result
    return 0


def _prerelease_ok(v: Version, c: Version) -> bool:
    """A pre-release only matches a constraint on a pre-release of the same segments."""
    if v.prerelease and c.prerelease:
        return v.segments == c.segments
    return not v.prerelease or bool(c.prerelease)


def _pessimistic(v: Version, c: Version) -> bool:
    if not _prerelease_ok(v, c) or (c.prerelease and not v.prerelease):
        return False
    if v.compare(c) < 0:
        return False
    if len(c.segments) > len(v.segments):
        return False
    if any(v.segments[i] != c.segments[i] for i in range(c.specified - 1)):
        return False
    last = len(c.segments) - 1
    return c.segments[last] <= v.segments[last]


_OPERATORS: dict[str, Callable[[Version, Version], bool]] = {
    "": lambda v, c: v.compare(c) == 0,
    "=": lambda v, c: v.compare(c) == 0,
    "!=": lambda v, c: v.compare(c) != 0,
    ">": lambda v, c: _prerelease_ok(v, c) and v.compare(c) > 0,
    "<": lambda v, c: _prerelease_ok(v, c) and v.compare(c) < 0,
    ">=": lambda v, c: _prerelease_ok(v, c) and v.compare(c) >= 0,
    "<=": lambda v, c: _prerelease_ok(v, c) and v.compare(c) <= 0,
    "~>": _pessimistic,
}


@dataclass(frozen=True)
class Constraint:
    """One ``<op> <version>`` term."""

    operator: str
    version: Version
    original: str

    def check(self, version: Version) -> bool:
        """Whether ``version`` satisfies this term."""
        return _OPERATORS[self.operator](version, self.version)


@dataclass(frozen=True)
class Constraints:
    """A comma-separated list of constraints, all of which must hold (go-version ``Constraints``)."""

    terms: tuple[Constraint, ...]

    @classmethod
    def parse(cls, text: str) -> Constraints:
        """Parse ``text``; raise ``ValueError("Malformed constraint: <term>")`` on a bad term."""
        terms = []
        for single in text.split(","):
            m = _CONSTRAINT_RE.fullmatch(single)
            if m is None:
                raise ValueError(f"Malformed constraint: {single}")
            terms.append(Constraint(m.group(1) or "", Version.parse(m.group(2)), single))
        return cls(tuple(terms))

    def check(self, version: Version | str) -> bool:
        """Whether ``version`` satisfies every term; an unparsable version string satisfies none."""
        if isinstance(version, str):
            try:
                version = Version.parse(version)
            except ValueError:
                return False
        return all(term.check(version) for term in self.terms)

    def __str__(self) -> str:
        return ",".join(term.original for term in self.terms)


def is_version(text: str) -> bool:
    """Whether ``text`` parses as a plain version (go-version ``NewVersion`` succeeds)."""
    try:
        Version.parse(text)
    except ValueError:
        return False
    return True
