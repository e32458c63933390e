"""WebSocket bytes written and read by hand for the hostile-input tests: frames built without our
encoder (any first byte, any masking, any announced length) and read back with wsproto, the oracle."""

from __future__ import annotations

import struct

from wsproto.frame_protocol import FrameProtocol, Opcode, ParseFailed

from kite.wire.wsframes import _apply_mask_python

#: Masking key of the frames built here unless a test picks one (any 4 bytes would do).
DEFAULT_KEY = b"\x37\xfa\x21\x3d"

#: One event as the tests compare them: ``("text", str)``, ``("binary", bytes)``, ``("ping", bytes)``,
#: ``("pong", bytes)``, ``("close", code, reason)`` -- the shapes of :mod:`kite.wire.wsframes`.
Event = tuple


def build_frame(b0: int, payload: bytes, masked: bool, key: bytes = DEFAULT_KEY, length: int | None = None) -> bytes:
    """One frame: first byte ``b0`` as given (so any FIN/RSV/opcode), the payload length in the fewest
    bytes, masked with ``key`` when ``masked``; ``length`` overrides the announced payload length."""
    n = len(payload) if length is None else length
    bit = 0x80 if masked else 0
    if n < 126:
        head = bytes((b0, bit | n))
    elif n < 0x10000:
        head = bytes((b0, bit | 126)) + struct.pack("!H", n)
    else:
        head = bytes((b0, bit | 127)) + struct.pack("!Q", n)
    if masked:
        return head + key + _apply_mask_python(payload, key)
    return head + payload


class WsprotoReader:
    """wsproto's frame decoder for one side (``masked``: the peer masks, i.e. we are the server),
    assembling messages into :data:`Event` tuples. ``error`` is the close code wsproto would fail
    with, once it has."""

    def __init__(self, masked: bool):
        self._protocol = FrameProtocol(client=not masked, extensions=[])
        self._parts: list = []
        self.events: list[Event] = []
        self.error: int | None = None

    def feed(self, data: bytes) -> list[Event]:
        """Decode ``data``; return the events it completed (also appended to :attr:`events`)."""
        if self.error is not None:
            return []
        new: list[Event] = []
        self._protocol.receive_bytes(data)
        try:
            for frame in self._protocol.received_frames():
                if frame.opcode is Opcode.PING:
                    new.append(("ping", frame.payload))
                elif frame.opcode is Opcode.PONG:
                    new.append(("pong", frame.payload))
                elif frame.opcode is Opcode.CLOSE:
                    code, reason = frame.payload
                    new.append(("close", int(code), reason))
                else:
                    self._parts.append(frame.payload)
                    if frame.message_finished:
                        text = frame.opcode is Opcode.TEXT
                        new.append(("text", "".join(self._parts)) if text else ("binary", b"".join(self._parts)))
                        self._parts = []
        except ParseFailed as exc:
            self.error = int(exc.code)
        self.events += new
        return new
