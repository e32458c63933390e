"""Fuzz harness: dnode messages (kite.wire.dnode) and the JSON codec under them.

Invariant: ``decode_message`` returns a message or raises ``RemoteProtocolError``; ``unscrub``
of what it returned never raises; ``jsoncodec.loads`` raises only its ``DECODE_ERRORS``.
"""

import atheris
import harness

with atheris.instrument_imports():
    from kite.wire import dnode, jsoncodec

ALLOWED = harness.ALLOWED


def TestOneInput(data: bytes) -> None:
    try:
        jsoncodec.loads(data)
    except jsoncodec.DECODE_ERRORS:
        pass
    try:
        msg = dnode.decode_message(data)
    except ALLOWED:
        return
    dnode.unscrub(msg.arguments, msg.callbacks, lambda cb_id: cb_id)


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
