"""kite.js (npm kite.js@1.0.13, ``tests/interop/kitejs/client.js``) calling a Python kite through the
reverse proxy and through the tunnel proxy, over every transport kite.js offers, with the Kontrol
token ``getKites`` returned.

The node harness is the interop tests' (:func:`tests.interop.conftest.run_kitejs_client`): a
missing node or kite.js FAILS these tests, as it does the interop ones.
"""

from __future__ import annotations

import gevent
import pytest

from tests.interop.conftest import run_kitejs_client
from tests.proxy.conftest import find_through, raw_websocket_url
from tests.proxy.methods import add_methods

# name -> (raw WebSocket or SockJS, extra client.js arguments)
TRANSPORTS = {
    "sockjs-websocket": (False, ["--sockjs-transports", "websocket"]),
    "sockjs-xhr-streaming": (False, ["--sockjs-transports", "xhr-streaming"]),
    "sockjs-xhr-polling": (False, ["--sockjs-transports", "xhr-polling"]),
    "sockjs-eventsource": (False, ["--sockjs-transports", "eventsource"]),
    "raw-websocket": (True, []),
}


@pytest.fixture(params=["reverse", "tunnel"])
def found(request, kites):
    if request.param == "reverse":
        proxy = request.getfixturevalue("proxy")
        backend, register, prefix = kites(), "register_to_proxy", proxy.public_base + "/proxy/"
    else:
        proxy = request.getfixturevalue("tunnel_proxy")
        backend, register, prefix = kites(serve=False), "register_to_tunnel", f"{proxy.url[:-5]}/proxy?kiteID="
        add_methods(backend)
    registrar = gevent.spawn(getattr(backend, register))
    caller = kites("bob", "caller", serve=False)
    yield find_through(caller, prefix)
    registrar.kill()


def kitejs(found, transport: str, method: str, args: str, *extra: str):
    raw, transport_args = TRANSPORTS[transport]
    url = raw_websocket_url(found.url) if raw else found.url
    auth = ["--auth-type", "token", "--auth-key", found.auth.key]
    rc, out, err = run_kitejs_client(url, method, args, *transport_args, *auth, *extra, timeout=8.0)
    return rc, out, f"client.js {transport} {method} {args}: rc={rc} out={out!r}\nstderr:\n{err}"


@pytest.mark.parametrize("transport", list(TRANSPORTS))
def test_kitejs_calls_through_the_proxy(found, transport):
    rc, out, detail = kitejs(found, transport, "square", "[4]")
    assert (rc, out) == (0, 16), detail
    rc, out, detail = kitejs(found, transport, "fail", "[]")
    assert rc == 1 and (out["type"], out["message"]) == ("genericError", "boom"), detail
    rc, out, detail = kitejs(found, transport, "callback", '["__fn__"]', "--envelope", "--wait-callbacks", "1")
    assert (rc, out) == (0, {"ok": True, "result": "done", "callbacks": [["hello"]]}), detail


def test_kitejs_without_the_token_is_refused(found):
    rc, out, err = run_kitejs_client(found.url, "square", "[4]", "--sockjs-transports", "websocket", timeout=8.0)
    assert rc == 1 and out["type"] == "authenticationError", err
