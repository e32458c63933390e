"""Fuzz harness: a call's arguments (kite.arguments) read with every typed accessor.

Invariant: on any received JSON value, each ``Value``/``Arguments`` accessor returns its type
or raises ``ArgumentError``.
"""

import atheris
import harness

with atheris.instrument_imports():
    from kite.arguments import Arguments, Value
    from kite.wire import jsoncodec

ALLOWED = harness.ALLOWED
GETTERS = ("one", "must_slice", "must_map", "must_string", "must_float64", "must_int", "must_bool", "must_function")


def TestOneInput(data: bytes) -> None:
    try:
        value = jsoncodec.loads(data)
    except jsoncodec.DECODE_ERRORS:
        return
    for name in GETTERS:
        try:
            getattr(Value(value), name)()
        except ALLOWED:
            pass
    args = Arguments(value)
    len(args), bool(args), list(args)
    for index in (0, 1, -1):
        try:
            args[index]
        except ALLOWED:
            pass


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
