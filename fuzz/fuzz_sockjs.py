"""Fuzz harness: SockJS frames (kite.wire.sockjs), both sides.

Invariant: ``decode_server_frame`` (what a dialing client reads) and ``decode_client_payload``
(what a server reads from a websocket message or an ``xhr_send`` body) return their value or
raise ``RemoteProtocolError``, for bytes and for text.
"""

import atheris
import harness

with atheris.instrument_imports():
    from kite.wire import sockjs

ALLOWED = harness.ALLOWED


def TestOneInput(data: bytes) -> None:
    text = data.decode("utf-8", "surrogateescape")
    for parse in (sockjs.decode_server_frame, sockjs.decode_client_payload):
        for frame in (data, text):
            try:
                parse(frame)
            except ALLOWED:
                pass


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
