"""kitecli against the real kite.js server: tell, callbacks, errors and ping over SockJS and raw WebSocket."""

from __future__ import annotations

import json
import re

from tests.kitecli.conftest import kitecli


def test_tell_over_sockjs_and_raw_websocket(kitejs_sockjs_server, kitejs_ws_server):
    for url in (kitejs_sockjs_server.url, kitejs_ws_server.url):
        r = kitecli("tell", url, "square", "7", "--no-auth")
        assert (r.code, r.out) == (0, "49\n"), (url, r.err)
        r = kitecli("tell", url, "echo", '{"a":[1,"x"]}', "--no-auth")
        assert json.loads(r.out) == {"a": [1, "x"]}


def test_tell_with_a_callback(kitejs_sockjs_server):
    # kite.js's server calls fn("hello"); its scrubber wraps every callback's arguments as if they
    # were a response (KITEJS.md): what arrives, and what kitecli prints, is [{"error": "hello"}].
    r = kitecli("tell", kitejs_sockjs_server.url, "callback", "--callback", "--no-auth")
    assert (r.code, r.lines) == (0, ['{"callback":[{"error":"hello"}]}', '"done"'])


def test_errors_from_kitejs(kitejs_sockjs_server):
    r = kitecli("tell", kitejs_sockjs_server.url, "failTyped", "--no-auth")
    assert (r.code, r.err) == (1, "kitecli: genericError: boom\n")
    r = kitecli("tell", kitejs_sockjs_server.url, "square", '"two"', "--no-auth")
    assert (r.code, r.err) == (1, "kitecli: argumentError: square expects a number\n")


def test_ping_kitejs(kitejs_ws_server):
    r = kitecli("ping", kitejs_ws_server.url, "--count", "2", "--interval", "0")
    assert r.code == 0, r.err
    assert re.fullmatch(r"2 calls, 2 answered, 0% lost, time \d+ ms", r.lines[-2])
