"""Fuzz harness: Kontrol queries (kontrol.storage.query) and their version constraints.

Invariant: any received JSON query is read by Kontrol (``handlers._query``, what
``getKites``/``getToken`` do) or refused with ``GenericError``; a valid one can be matched
and scanned. ``Constraints.parse`` raises only ``ValueError``. Never a hang (the timeout of
libFuzzer, ``-timeout``, reports a slow input).
"""

import json

import atheris
import harness

with atheris.instrument_imports():
    from kite.wire.protocol import KiteIdentity
    from kontrol import handlers
    from kontrol.storage.version import Constraints

ALLOWED = harness.ALLOWED
KITE = KiteIdentity("math", "alice", "id", "prod", "eu", "1.2.3", "host")


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        Constraints.parse(text).check("1.2.3")
    except ValueError:
        pass
    try:
        obj = json.loads(text)
    except (ValueError, RecursionError):
        obj = {"username": "alice", "environment": "prod", "name": "math", "version": text}
    try:
        query = handlers._query(obj)
    except ALLOWED:
        return
    query.matches(KITE)
    query.scan_prefix()


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
