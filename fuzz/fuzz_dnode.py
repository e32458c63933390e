"""Fuzz harness: dnode messages (kite.wire.dnode) and the JSON codec under them.

Invariant: ``decode_message`` returns a message or raises ``RemoteProtocolError``; ``unscrub``
of what it returned never raises; ``jsoncodec.loads`` raises only its ``DECODE_ERRORS``.
"""

import sys

import atheris

with atheris.instrument_imports():
    from kite.errors import KiteError, ProtocolError
    from kite.wire import dnode, jsoncodec

ALLOWED = (ProtocolError, KiteError)


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


def main() -> None:
    atheris.Setup(sys.argv, TestOneInput)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
