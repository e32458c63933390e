"""The kite runtime (connection, client, kite, methods) over in-memory sessions."""

import json

import gevent
import pytest

from kite import (
    RETURN_FIRST,
    RETURN_LATEST,
    ArgumentError,
    AuthenticationError,
    DisconnectError,
    GenericError,
    Kite,
    KiteError,
    MethodNotFoundError,
    RequestLimitError,
    TimeoutError,
)
from kite.client import Client
from tests.memsession import session_pair


def connect(server: Kite, caller: Kite) -> tuple[Client, gevent.Greenlet]:
    a, b = session_pair()
    served = gevent.spawn(server._serve_session, b)
    client = Client(caller, "mem://server")
    client._attach(a)
    return client, served


@pytest.fixture
def math():
    k = Kite("math", "1.0.0")
    k.config.disable_authentication = True
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("echo", lambda r: r.args[0])
    k.handle_func("fail", lambda r: (_ for _ in ()).throw(RuntimeError("boom")))
    return k


@pytest.fixture
def client(math):
    c, served = connect(math, Kite("caller", "1.0.0"))
    yield c
    c.close()
    served.join(2)


def test_square_and_echo(client):
    assert client.tell("square", 4) == 16
    assert client.tell("echo", {"a": [1, None]}) == {"a": [1, None]}
    assert client.go("square", 5).get(timeout=2) == 25
    assert client.tell_with_timeout("square", 2.0, 3) == 9


def test_errors_are_typed(client):
    with pytest.raises(GenericError) as e:
        client.tell("fail")
    assert e.value.message == "boom" and e.value.type == "genericError" and e.value.code == ""
    with pytest.raises(MethodNotFoundError) as e:
        client.tell("nosuch")
    assert e.value.message == "Method not found: nosuch"
    with pytest.raises(ArgumentError) as e:
        client.tell("square", "x")
    with pytest.raises(ArgumentError, match="Invalid array length"):
        client.tell("square", 1, 2)


def test_auth_required_without_authenticators():
    k = Kite("math", "1.0.0")
    k.handle_func("secret", lambda r: 1)
    c, _ = connect(k, Kite("caller", "1.0.0"))
    with pytest.raises(AuthenticationError, match="No authentication information is provided"):
        c.tell("secret")
    assert c.tell("kite.ping") == "pong"
    from kite import Auth

    c.auth = Auth("xyz", "k")
    with pytest.raises(AuthenticationError) as e:
        c.tell("secret")
    assert e.value.message == "Unknown authentication type: xyz"

    def deny(request):
        raise ValueError("kontrol key is not trusted")

    k.authenticators["kiteKey"] = deny
    c.auth = Auth("kiteKey", "k")
    with pytest.raises(AuthenticationError) as e:
        c.tell("secret")
    assert e.value.message == "kiteKey: kontrol key is not trusted"

    def allow(request):
        request.username = "alice"

    k.authenticators["kiteKey"] = allow
    k.handle_func("whoami", lambda r: r.username)
    assert c.tell("whoami") == "alice"


def test_builtins_require_auth_even_when_kite_disables_it(client):
    with pytest.raises(AuthenticationError):
        client.tell("kite.systemInfo")


def test_callbacks_both_ways(math):
    got = []
    math.handle_func("callback", lambda r: (r.args.one().must_function()("hello"), "done")[1])
    c, _ = connect(math, Kite("caller", "1.0.0"))
    assert c.tell("callback", lambda s: got.append(s)) == "done"
    gevent.sleep(0.01)
    assert got == ["hello"]


def test_handler_calls_back_into_caller_with_tell(math):
    caller = Kite("caller", "1.0.0")
    caller.handle_func("name", lambda r: "caller-side").disable_authentication()
    math.handle_func("ask", lambda r: r.client.tell("name") + "!")
    c, _ = connect(math, caller)
    assert c.tell("ask") == "caller-side!"
    # Also when every worker of the connection is busy calling back.
    math.config.max_concurrent_calls = 2
    c2, _ = connect(math, caller)
    results = [c2.go("ask") for _ in range(10)]
    assert [r.get(timeout=5) for r in results] == ["caller-side!"] * 10


def test_disconnect_fails_all_pending_calls(math):
    gate = gevent.event.Event()
    math.handle_func("wait", lambda r: gate.wait())
    c, _ = connect(math, Kite("caller", "1.0.0"))
    pending = [c.go("wait") for _ in range(5)]
    gevent.sleep(0.01)
    c._conn.session.peer.close()
    for p in pending:
        with pytest.raises(DisconnectError, match="Remote kite has disconnected"):
            p.get(timeout=2)


def test_timeout_fails_only_its_own_call(math):
    math.handle_func("sleep", lambda r: gevent.sleep(r.args.one().must_float64()))
    c, _ = connect(math, Kite("caller", "1.0.0"))
    slow = c.go("sleep", 0.3)
    with pytest.raises(TimeoutError) as e:
        c.tell_with_timeout("sleep", 0.05, 1)
    assert isinstance(e.value, KiteError) and isinstance(e.value, builtins_timeout())
    assert e.value.message == 'No response to "sleep" method in 0.05s'
    assert slow.get(timeout=2) is None
    with pytest.raises(TimeoutError):
        c.go_with_timeout("sleep", 0.05, 1).get(timeout=2)
    assert c.tell("square", 3) == 9


def test_an_enclosing_timeout_stays_the_callers_own(math):
    # A gevent.Timeout around tell() is not turned into the call's TimeoutError, and the
    # abandoned call leaves nothing behind; its late reply is ignored.
    math.handle_func("sleep", lambda r: gevent.sleep(r.args.one().must_float64()))
    c, _ = connect(math, Kite("caller", "1.0.0"))
    outer = gevent.Timeout(0.05)
    with pytest.raises(gevent.Timeout) as e:
        with outer:
            c.tell_with_timeout("sleep", 10, 0.2)
    assert e.value is outer
    assert c._conn._pending == {}
    gevent.sleep(0.3)  # the late reply arrives and is dropped
    assert c.tell("square", 3) == 9


def builtins_timeout():
    import builtins

    return builtins.TimeoutError


def test_response_callback_is_forgotten(math):
    c, _ = connect(math, Kite("caller", "1.0.0"))
    for _ in range(5):
        c.tell("square", 2)
    assert c._conn._pending == {} and c._scrubber.callbacks == {}


def test_chain_order_and_return_modes(math):
    order = []

    def step(name, value=None):
        def fn(r):
            order.append(name)
            r.context.setdefault("seen", []).append(name)
            return value

        return fn

    math.pre_handle_func(step("kite-pre"))
    math.post_handle_func(step("kite-post", "kite-post-result"))
    m = math.handle_func("chain", step("handler", "handler-result"))
    m.pre_handle_func(step("method-pre")).post_handle_func(step("method-post", "method-post-result"))
    c, _ = connect(math, Kite("caller", "1.0.0"))
    assert c.tell("chain") == "handler-result"
    assert order == ["method-pre", "kite-pre", "handler", "method-post", "kite-post"]
    m.handling(RETURN_LATEST)
    assert c.tell("chain") == "kite-post-result"
    m.handling(RETURN_FIRST)
    assert c.tell("chain") == "handler-result"


def test_error_stops_chain(math):
    ran = []
    m = math.handle_func("x", lambda r: ran.append("handler"))
    m.pre_handle_func(lambda r: (_ for _ in ()).throw(ArgumentError("bad pre")))
    c, _ = connect(math, Kite("caller", "1.0.0"))
    with pytest.raises(ArgumentError, match="bad pre"):
        c.tell("x")
    assert ran == []


def test_throttle(math):
    math.handle_func("t", lambda r: 1).throttle(fill_interval=10, capacity=2)
    c, _ = connect(math, Kite("caller", "1.0.0"))
    assert c.tell("t") == 1 and c.tell("t") == 1
    with pytest.raises(RequestLimitError) as e:
        c.tell("t")
    assert e.value.message == "The maximum request rate is exceeded."


def test_first_request_records_peer_identity(math):
    seen = []
    math.on_first_request(lambda cl: seen.append(cl.kite.name))
    math.handle_func("peer", lambda r: [r.client.kite.name, r.username])
    caller = Kite("caller", "2.0.0")
    caller.config.username = "bob"
    c, _ = connect(math, caller)
    assert c.tell("peer") == ["caller", "bob"]
    c.tell("peer")
    assert seen == ["caller"]


def test_unencodable_result_is_a_generic_error(math):
    math.handle_func("obj", lambda r: object())
    c, _ = connect(math, Kite("caller", "1.0.0"))
    with pytest.raises(GenericError, match="cannot encode result"):
        c.tell("obj")


def test_garbage_messages_are_dropped_and_connection_survives(math):
    a, b = session_pair()
    gevent.spawn(math._serve_session, b)
    for junk in ["", "x", "[]", '{"method":null}', '{"method":"square","arguments":5}',
                 '{"method":"square","arguments":[1,2],"callbacks":{"0":[0]}}',
                 '{"method":"square","arguments":[{"responseCallback":"[Function]"}],"callbacks":{"1000":[0,"responseCallback"]}}',
                 '{"method":99,"arguments":[]}']:
        a.send(junk)
    c = Client(Kite("caller", "1.0.0"), "mem://")
    c._attach(a)
    assert c.tell("square", 3) == 9
    replies = [json.loads(m) for m in b.sent]
    # the options-less call with a response callback got an argumentError-like reply, not silence
    assert replies[0]["arguments"][0]["error"]["type"] == "argumentError"


def test_callbacks_run_in_arrival_order(math):
    def many(r):
        fn = r.args.one().must_function()
        for i in range(50):
            fn(i)

    math.handle_func("many", many)
    got = []
    c, _ = connect(math, Kite("caller", "1.0.0"))
    c.tell("many", got.append)
    gevent.sleep(0.05)
    assert got == list(range(50))


def test_serial_processing_when_concurrency_disabled(math):
    order = []

    def slow(r):
        n = r.args.one().must_float64()
        gevent.sleep(0.02 if n == 0 else 0)
        order.append(n)

    math.handle_func("slow", slow)
    math.config.disable_concurrency = True
    c, _ = connect(math, Kite("caller", "1.0.0"))
    rs = [c.go("slow", i) for i in range(3)]
    [r.get(timeout=2) for r in rs]
    assert order == [0, 1, 2]


def test_a_flooding_peer_lets_the_event_loop_turn(math):
    # 500 calls already queued on the connection: the kite runs them as it reads
    # them, but lets the loop go round every INLINE_CALLS_PER_TURN calls, so other
    # greenlets (other connections, timers) are not starved by one busy peer.
    from kite.connection import INLINE_CALLS_PER_TURN

    served = []
    math.handle_func("count", lambda r: served.append(1))
    c, _ = connect(math, Kite("caller", "1.0.0"))
    results = [c.go("count") for _ in range(500)]  # queued before the server's reader first runs
    seen_at = []
    gevent.spawn(lambda: seen_at.append(len(served)))
    [r.get(timeout=5) for r in results]
    assert INLINE_CALLS_PER_TURN < 500
    assert seen_at and 0 < seen_at[0] <= INLINE_CALLS_PER_TURN


def test_a_call_killed_in_its_handler_frees_its_slot(math):
    # One call at a time: the first handler blocks and its greenlet is killed; the
    # connection keeps reading (another greenlet took over) and the next call runs.
    math.config.disable_concurrency = True
    running = []

    def hang(r):
        running.append(gevent.getcurrent())
        gevent.sleep(10)

    math.handle_func("hang", hang)
    c, _ = connect(math, Kite("caller", "1.0.0"))
    c.go("hang")
    while not running:
        gevent.sleep(0.001)
    running[0].kill()
    assert c.tell_with_timeout("square", 2, 7) == 49


def test_dnode_methods_and_cull_are_unknown_methods(client):
    for name in ("methods", "cull"):
        with pytest.raises(MethodNotFoundError, match=f"Method not found: {name}"):
            client.tell(name)
