"""Fuzz harness: the websocket client's reading of an upgrade answer (kite.wire.wshandshake).

Invariant: any response bytes are split, parsed and accepted, or refused with
``HandshakeError`` (the error a refused upgrade raises).
"""

import atheris
import harness

with atheris.instrument_imports():
    from kite.wire import wshandshake

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def TestOneInput(data: bytes) -> None:
    try:
        split = wshandshake.split_head(data, "ws://fuzz/")
        if split is None:
            return
        status, headers = wshandshake.parse_head(split[0], "ws://fuzz/")
        wshandshake.reject_body_length(headers)
        if status == 101:
            wshandshake.check_accepted(headers, KEY, "ws://fuzz/")
    except wshandshake.HandshakeError:
        pass


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
