"""kite.js (npm kite.js@1.0.13, ``tests/interop/kitejs/client.js``) calling a Python kite through the
reverse proxy, over every transport kite.js offers, with the Kontrol token ``getKites`` returned.

The node harness is the interop tests' (:func:`tests.interop.conftest.run_kitejs_client`): a
missing node or kite.js FAILS these tests, as it does the interop ones.
"""

from __future__ import annotations

import gevent
import pytest

from tests.interop.conftest import run_kitejs_client
from tests.proxy.conftest import find_through

# name -> (URL suffix under the public URL, extra client.js arguments)
TRANSPORTS = {
    "sockjs-websocket": ("", ["--sockjs-transports", "websocket"]),
    "sockjs-xhr-streaming": ("", ["--sockjs-transports", "xhr-streaming"]),
    "sockjs-xhr-polling": ("", ["--sockjs-transports", "xhr-polling"]),
    "sockjs-eventsource": ("", ["--sockjs-transports", "eventsource"]),
    "raw-websocket": ("/websocket", []),
}


@pytest.fixture
def found(proxy, kites):
    backend = kites()
    registrar = gevent.spawn(backend.register_to_proxy)
    caller = kites("bob", "caller", serve=False)
    yield find_through(caller, proxy.public_base + "/proxy/")
    registrar.kill()


def kitejs(found, transport: str, method: str, args: str, *extra: str):
    suffix, transport_args = TRANSPORTS[transport]
    url = found.url + suffix
    if suffix:
        url = url.replace("http://", "ws://", 1)
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
