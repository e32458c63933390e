"""What every harness shares: the exceptions a parser may raise, and atheris' entry point.

Each ``fuzz_<parser>.py`` imports this module (the folder of a script run as ``python
fuzz/fuzz_x.py`` is on ``sys.path``) before it imports its parser under
``atheris.instrument_imports()``; only :mod:`kite.errors` is loaded here, so the parsers stay
instrumented.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any

import atheris

from kite.errors import KiteError, ProtocolError

#: What a parser may raise on bad input; anything else propagates: a crash, for libFuzzer.
ALLOWED = (ProtocolError, KiteError)


def tolerating(parse: Callable[..., Any], *args: Any) -> None:
    """``parse(*args)``, its refusals (:data:`ALLOWED`) swallowed."""
    try:
        parse(*args)
    except ALLOWED:
        pass


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    """Run ``test_one_input`` under libFuzzer with this process's arguments (``-max_total_time=``...)."""
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
