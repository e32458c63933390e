"""The fault-and-load suite (issue 13): faults injected into real processes on loopback.

Every test here runs for a short, bounded time inside ``make test``; ``make soak`` sets
``KITE_SOAK_SECONDS`` (e.g. 600) and the same tests hold their load that long and print
their figures. Tests read the duration through the :func:`soak_seconds` fixture.
"""

from __future__ import annotations

import os

import pytest

#: Seconds of steady load per test inside ``make test``.
DEFAULT_LOAD_SECONDS = 3.0


def load_seconds() -> float:
    """How long a test holds its load: ``KITE_SOAK_SECONDS`` when set (``make soak``), else a few seconds."""
    return float(os.environ.get("KITE_SOAK_SECONDS") or DEFAULT_LOAD_SECONDS)


def soaking() -> bool:
    """True under ``make soak`` (longer runs; figures printed)."""
    return bool(os.environ.get("KITE_SOAK_SECONDS"))


@pytest.fixture
def soak_seconds() -> float:
    return load_seconds()
