"""How kitecli prints: JSON (pretty on a terminal, compact when piped or with --json), aligned tables."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any


def _placeholder(value: Any) -> Any:
    """What ``json`` cannot encode: a function (a callback in a result) prints as ``"[Function]"``."""
    if callable(value):
        return "[Function]"
    raise TypeError(f"cannot print a {type(value).__name__} as JSON")


def to_json(value: Any, pretty: bool = False) -> str:
    """``value`` as JSON text; functions become ``"[Function]"``."""
    if pretty:
        return json.dumps(value, indent=2, ensure_ascii=False, default=_placeholder)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=_placeholder)


def print_json(value: Any, args: argparse.Namespace) -> None:
    """Print one JSON document: indented on a terminal, one compact line when piped or with ``--json``."""
    pretty = sys.stdout.isatty() and not getattr(args, "json", False)
    print(to_json(value, pretty), flush=True)


def print_json_line(value: Any) -> None:
    """Print one compact JSON line (for streams) and flush it at once."""
    print(to_json(value), flush=True)


def table(rows: Sequence[Sequence[str]], header: Sequence[str] | None = None) -> str:
    """Rows as left-aligned columns separated by two spaces (the last column is not padded)."""
    lines = [list(header)] if header else []
    lines += [list(r) for r in rows]
    if not lines:
        return ""
    widths = [max(len(line[i]) for line in lines if i < len(line)) for i in range(max(map(len, lines)))]
    out = []
    for line in lines:
        cells = [cell.ljust(widths[i]) if i < len(line) - 1 else cell for i, cell in enumerate(line)]
        out.append("  ".join(cells))
    return "\n".join(out)
