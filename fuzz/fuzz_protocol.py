"""Fuzz harness: the kite protocol shapes (kite.wire.protocol) read from Kontrol's answers.

Invariant: on any JSON value, ``KiteIdentity.from_wire`` never raises, and
``RegisterResult.from_wire``, ``parse_get_kites_result`` and ``KiteIdentity.from_string``
raise only their documented ``ValueError`` (their callers turn it into ``InvalidResponseError``).
"""

import json

import atheris
import harness

with atheris.instrument_imports():
    from kite.wire.protocol import KiteIdentity, RegisterResult, parse_get_kites_result


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        KiteIdentity.from_string(text)
    except ValueError:
        pass
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):
        return
    KiteIdentity.from_wire(value)
    for parse in (RegisterResult.from_wire, parse_get_kites_result):
        try:
            parse(value)
        except ValueError:
            pass


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
