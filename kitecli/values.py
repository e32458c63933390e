"""Parsing what users type: durations (Go syntax), call arguments (JSON, else text), transports."""

from __future__ import annotations

import argparse
import json
from typing import Any

#: The --transport choices (``auto``: websocket, falling back to XHR polling when it is refused).
TRANSPORTS = ("websocket", "xhr_polling", "xhr_streaming", "auto")


def duration(text: str) -> float:
    """Seconds from a Go duration (``4s``, ``1m``, ``500ms``) or a bare number of seconds."""
    from kite.config import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (use Go syntax like 4s, 1m or 500ms)") from None
    if seconds < 0:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r}: must not be negative")
    return seconds


def call_argument(text: str) -> Any:
    """A call argument: the JSON value when ``text`` parses as JSON (``4``, ``"4"``, ``{"a":1}``,
    ``[1,2]``, ``true``, ``null``), otherwise ``text`` itself as a string."""
    try:
        return json.loads(text, parse_constant=_not_json)
    except ValueError:
        return text


def _not_json(name: str) -> Any:
    """NaN and Infinity are not JSON (Python's parser accepts them): such an argument is a string."""
    raise ValueError(name)
