"""Python client -> kite.js server (npm kite.js@1.0.13, tests/interop/kitejs/server.js).

kite.js quirks the tests pin down (see the comments in server.js):

* an unknown method gets no answer at all, so the call only ends by timing out;
* ``fail`` answers ``{"error": {"message": "boom"}}`` without ``type``: we read it as
  genericError "boom";
* a server->client *callback* call arrives wrapped as ``[{"error": arg0, "result": arg1}]``,
  so our callback gets one dict ``{"error": "hello"}``;
* ``reverse [method, args]`` makes the kite.js server call ``method`` on *our* client over
  the same connection, which our client serves from its local Kite.
"""

from __future__ import annotations

import builtins

import gevent
import pytest
from gevent.event import AsyncResult

from kite import Kite
from kite import errors as kite_errors

# name -> (server fixture, which server URL, new_client keyword arguments)
CONFIGS = {
    "sockjs-websocket": ("kitejs_sockjs_server", "url", {}),
    "sockjs-xhr-polling": ("kitejs_sockjs_server", "url", {"transport": "xhr_polling"}),
    "sockjs-xhr-streaming": ("kitejs_sockjs_server", "url", {"transport": "xhr_streaming"}),
    "sockjs-raw-websocket": ("kitejs_sockjs_server", "ws_url", {}),
    "ws-server": ("kitejs_ws_server", "url", {}),
}


def _double(r):
    return r.args.one().must_float64() * 2


@pytest.fixture(scope="module", params=list(CONFIGS))
def client(request):
    """A dialed Python client of the kite.js server, one per transport configuration."""
    server_fixture, which, kwargs = CONFIGS[request.param]
    server = request.getfixturevalue(server_fixture)
    local = Kite("exp2", "1.0.0")
    local.config.disable_authentication = True
    local.handle_func("double", _double)
    c = local.new_client(getattr(server, which), **kwargs)
    try:
        c.dial_timeout(10)
        yield c
    finally:
        c.close()
        local.close()
    assert server.alive(), f"kite.js server died:\n{server.stderr_text()}"


def test_square(client):
    assert client.tell("square", 4) == 16
    assert client.tell("square", 1.5) == 2.25


def test_echo(client):
    value = {"a": [1, "x", None, True, 2.5], "b": {}, "u": "\u00e9\u6f22"}
    assert client.tell("echo", value) == value


def test_add(client):
    assert client.tell("add", 1, 2, 3.5) == 6.5


def test_fail_without_type_is_generic_error(client):
    with pytest.raises(kite_errors.GenericError) as ei:
        client.tell("fail")
    assert ei.value.type == "genericError"
    assert ei.value.message == "boom"


def test_typed_error_from_kitejs(client):
    """kite.js' add answers {"type":"argumentError","message":...} (no code) for non-numbers."""
    with pytest.raises(kite_errors.ArgumentError) as ei:
        client.tell("add", 2, "x")
    assert ei.value.message == "add expects numbers"


def test_callback_gets_kitejs_wrapped_args(client):
    got = AsyncResult()
    assert client.tell("callback", lambda *a: got.set(a)) == "done"
    assert got.get(timeout=5) == ({"error": "hello"},)


def test_unknown_method_times_out(client):
    with pytest.raises(kite_errors.TimeoutError) as ei:
        client.tell_with_timeout("nosuchmethod", 0.5)
    assert isinstance(ei.value, builtins.TimeoutError)
    # the connection is still usable afterwards
    assert client.tell("square", 3) == 9


def test_ping(client):
    assert client.tell("kite.ping") == "pong"


def test_reverse_builtin(client):
    """kite.js calls kite.ping on our client; our client answers "pong"."""
    assert client.tell("reverse", "kite.ping", []) == "pong"


def test_reverse_local_handler(client):
    """kite.js calls a handler registered on our client's local Kite."""
    assert client.tell("reverse", "double", [21]) == 42


def test_concurrent_calls(client):
    futures = [client.go("square", i) for i in range(16)]
    assert [f.get(timeout=10) for f in futures] == [i * i for i in range(16)]
    jobs = [gevent.spawn(client.tell, "add", i, 1) for i in range(16)]
    gevent.joinall(jobs, timeout=10, raise_error=True)
    assert [j.value for j in jobs] == [i + 1 for i in range(16)]
