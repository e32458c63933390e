"""Fuzz harness: the call envelope ``{kite, authentication, withArgs, responseCallback}``
served by ``kite.calls.serve_call`` on a kite with authentication on.

Invariant: for any decoded dnode message, ``serve_call`` never raises and answers exactly
once through a callable response callback, with ``{"error", "result"}``.
"""

import atheris
import harness

with atheris.instrument_imports():
    from kite import testutil
    from kite.calls import serve_call
    from kite.client import Client
    from kite.wire import dnode

ALLOWED = harness.ALLOWED

KITE = testutil.new_kite("fuzzed", username="alice")
KITE.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
KITE.handle_func("echo", lambda r: r.args[0] if r.args else None).disable_authentication()


def TestOneInput(data: bytes) -> None:
    try:
        msg = dnode.decode_message(data)
    except ALLOWED:
        return
    replies = []

    def respond(response):
        callbacks = {}
        dnode.encode_message(0, dnode.Scrubber().scrub([response], [], callbacks), callbacks)
        replies.append(response)

    dnode.unscrub(msg.arguments, msg.callbacks, lambda cb_id: respond)
    client = Client(KITE)
    client._dialed = False
    serve_call(KITE, client, str(msg.method), msg.arguments)
    options = msg.arguments[0] if msg.arguments and isinstance(msg.arguments[0], dict) else {}
    if options.get("responseCallback") is respond:
        assert len(replies) == 1, replies


if __name__ == "__main__":
    harness.fuzz(TestOneInput)
