"""Shared strategies and the invariant check of the hostile-input tests.

Random bytes rarely get past the first ``json.loads``; what finds bugs is input of the right
shape with the wrong parts: valid messages then mutated (:func:`mutated`), JSON of the right
shape with hostile values in it (:data:`hostile_values`: huge integers, digit strings past
``int()``'s 4300-digit limit, nesting near the decoders' depth limits, lone surrogates,
NaN and the infinities that Python's JSON reader accepts).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

from kite.errors import KiteError, ProtocolError

#: How many times more examples the ``long`` profile runs than ``ci``.
LONG_FACTOR = 50
#: The profile in use: ``ci`` unless ``HYPOTHESIS_PROFILE`` says otherwise.
PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "ci")

#: What a parser of remote input may raise (the invariant of issue 13).
ALLOWED = (ProtocolError, KiteError)


def examples(ci_examples: int) -> settings:
    """Settings for one test: ``ci_examples`` under the ``ci`` profile, scaled under ``long``."""
    scale = LONG_FACTOR if PROFILE == "long" else 1
    return settings(settings.get_profile(PROFILE), max_examples=ci_examples * scale)


def parses_or_refuses(fn: Any, *args: Any, allowed: tuple[type[BaseException], ...] = ALLOWED) -> Any:
    """Call ``fn(*args)``; return its value, or ``None`` when it raised one of ``allowed``.

    Any other exception propagates and fails the test with the input hypothesis found.
    """
    try:
        return fn(*args)
    except allowed:
        return None


def nested(depth: int, leaf: Any = 0) -> Any:
    """``leaf`` inside ``depth`` lists: ``[[[...0...]]]``."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


#: JSON scalars, including the ones that break naive code.
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 2**64, 10**400, -(10**400), 0, -1]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([1e308, -1e308, 5e-324, 0.5, -0.0]),
    st.text(max_size=20),
    st.sampled_from(["", "[Function]", "0", "-1", "1" * 30, "1" * 5000, "\u0661", "\ud800", "\x00", "/", "a/b"]),
)

#: Scalars only Python's JSON reader produces (orjson refuses them; the stdlib fallback takes them).
python_only_scalars = st.sampled_from([float("nan"), float("inf"), float("-inf")])

#: Depths around where repr() (1000 frames), orjson (1024 levels) and the stdlib decoder give up.
DEEP = (900, 990, 1000, 1023, 1025, 5000)
#: Marker strings that :func:`to_json_text` replaces by arrays nested that deep. (Deep values are
#: made as text: ``json.dumps`` of them would itself run out of stack inside hypothesis.)
deep_markers = st.sampled_from([f"@deep{depth}@" for depth in DEEP])
_DEEP_MARKER = re.compile(r'"@deep(\d+)@"')

#: Any JSON value, small and wide, with hostile scalars and now and then a deep one (a marker).
json_values = st.recursive(
    st.one_of(scalars, python_only_scalars, deep_markers),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.text(max_size=8), children, max_size=4),
    ),
    max_leaves=12,
)


def deep_text(depth: int) -> str:
    """A JSON array nested ``depth`` levels: ``[[[...0...]]]``."""
    return "[" * depth + "0" + "]" * depth


def to_json_text(value: Any) -> str:
    """``value`` as JSON text, each deep marker replaced by an array nested that deep."""
    return _DEEP_MARKER.sub(lambda m: deep_text(int(m.group(1))), json.dumps(value))


#: JSON-encodable values (what a peer can actually send), as text.
json_texts = json_values.map(to_json_text)


@st.composite
def mutated(draw: st.DrawFn, base: st.SearchStrategy[str]) -> str:
    """A text from ``base`` with a few random edits: cut, insert, replace, duplicate or truncate."""
    text = draw(base)
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["cut", "insert", "replace", "duplicate", "truncate"]))
        i = draw(st.integers(0, len(text)))
        j = draw(st.integers(i, len(text)))
        if op == "cut":
            text = text[:i] + text[j:]
        elif op == "insert":
            fragment = draw(st.sampled_from(list('[]{}",:0-.e\\ ') + ["\\u", "\\ud800", "null", "1" * 5000]))
            text = text[:i] + fragment + text[i:]
        elif op == "replace":
            text = text[:i] + draw(st.text(max_size=3)) + text[j:]
        elif op == "duplicate":
            text = text[:j] + text[i:j] + text[j:]
        else:
            text = text[:i]
    return text


def texts_and_bytes(base: st.SearchStrategy[str]) -> st.SearchStrategy[str | bytes]:
    """``base`` as text, as UTF-8 bytes, as raw bytes, or as garbage text."""
    return st.one_of(
        base,
        base.map(lambda text: text.encode("utf-8", "surrogatepass")),
        st.binary(max_size=64),
        st.text(max_size=64),
    )
