"""kite.js client (npm kite.js@1.0.13, tests/interop/kitejs/client.js) -> Python kite server.

Every call runs ``node client.js URL METHOD ARGS`` once, over each transport kite.js
offers: SockJS (sockjs-client 1.6.1) restricted to one of its transports, and the raw
WebSocket endpoint ``ws://127.0.0.1:P/kite/websocket``.
"""

from __future__ import annotations

import pytest
import requests

from tests.interop.conftest import run_kitejs_client

# name -> (which URL of the Python server, extra client.js arguments)
TRANSPORTS = {
    "sockjs-websocket": ("sockjs", ["--sockjs-transports", "websocket"]),
    "sockjs-xhr-streaming": ("sockjs", ["--sockjs-transports", "xhr-streaming"]),
    "sockjs-xhr-polling": ("sockjs", ["--sockjs-transports", "xhr-polling"]),
    "sockjs-eventsource": ("sockjs", ["--sockjs-transports", "eventsource"]),
    "raw-websocket": ("ws", []),
}

# Result-returning calls: (method, withArgs JSON, expected result)
RESULT_CASES = {
    "square": ("square", "[4]", 16),
    "square-float": ("square", "[1.5]", 2.25),
    "echo": ("echo", '[{"a":[1,"x",null,true,2.5],"b":{},"u":"\\u00e9\\u6f22"}]',
             {"a": [1, "x", None, True, 2.5], "b": {}, "u": "\u00e9\u6f22"}),
    "add": ("add", "[1,2,3.5]", 6.5),
    "kite.ping": ("kite.ping", "[]", "pong"),
}

# Failing calls: (method, withArgs JSON, expected error type, expected error message)
ERROR_CASES = {
    "fail-is-generic-error": ("fail", "[]", "genericError", "boom"),
    "unknown-method-is-method-not-found": ("nosuchmethod", "[1]", "methodNotFound", "Method not found: nosuchmethod"),
}

transport_params = pytest.mark.parametrize("transport", list(TRANSPORTS))


def call(py_math_urls, transport, method, args_json, *extra, timeout=5.0):
    which, transport_args = TRANSPORTS[transport]
    rc, out, err = run_kitejs_client(py_math_urls[which], method, args_json, *transport_args, *extra,
                                     timeout=timeout)
    detail = f"client.js {transport} {method} {args_json}: rc={rc} stdout={out!r}\nstderr:\n{err}"
    return rc, out, detail


@transport_params
@pytest.mark.parametrize("case", list(RESULT_CASES))
def test_result(py_math_urls, transport, case):
    method, args_json, expected = RESULT_CASES[case]
    rc, out, detail = call(py_math_urls, transport, method, args_json)
    assert rc == 0, detail
    assert out == expected, detail


@transport_params
@pytest.mark.parametrize("case", list(ERROR_CASES))
def test_error(py_math_urls, transport, case):
    method, args_json, error_type, message = ERROR_CASES[case]
    rc, out, detail = call(py_math_urls, transport, method, args_json)
    assert rc == 1, detail
    assert out["type"] == error_type, detail
    assert out["message"] == message, detail


@transport_params
def test_callback(py_math_urls, transport):
    """The client passes a function; the server calls it with "hello", then returns "done"."""
    rc, out, detail = call(py_math_urls, transport, "callback", '["__fn__"]',
                           "--envelope", "--wait-callbacks", "1")
    assert rc == 0, detail
    assert out == {"ok": True, "result": "done", "callbacks": [["hello"]]}, detail


def test_eventsource_endpoint_is_served(py_math_urls):
    """sockjs-client may pick eventsource; the SockJS eventsource receive URL must open a session."""
    url = py_math_urls["sockjs"] + "/000/evsrctst/eventsource"
    with requests.get(url, stream=True, timeout=5) as resp:
        assert resp.status_code == 200, (
            f"GET {url} -> {resp.status_code}: "
            "the Python server does not serve the SockJS eventsource transport"
        )
        assert resp.headers.get("Content-Type", "").startswith("text/event-stream"), resp.headers
        first = b""
        for chunk in resp.iter_content(chunk_size=None):
            first += chunk
            if b"data: o" in first:
                break
        assert b"data: o" in first, first
