"""Fuzz harness: the RFC 6455 frame decoder (kite.wire.wsframes), fed in chunks.

Invariant: on both sides (masked frames on a server, unmasked on a client), any bytes cut
anywhere give events or a ``FrameError`` (a ``RemoteProtocolError``).
"""

import atheris
import harness

with atheris.instrument_imports():
    from kite.wire import wsframes

ALLOWED = harness.ALLOWED
#: A small limit, so that "message too big" is reachable.
MAX_MESSAGE = 4096


def TestOneInput(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    masked = fdp.ConsumeBool()
    cuts = [fdp.ConsumeIntInRange(0, 64) for _ in range(fdp.ConsumeIntInRange(0, 8))]
    stream = fdp.ConsumeBytes(fdp.remaining_bytes())
    decoder = wsframes.FrameDecoder(masked=masked, max_message_size=MAX_MESSAGE)
    try:
        pos = 0
        for size in cuts:
            decoder.receive(stream[pos : pos + size])
            pos += size
        decoder.receive(stream[pos:])
    except ALLOWED:
        pass

if __name__ == "__main__":
    harness.fuzz(TestOneInput)
