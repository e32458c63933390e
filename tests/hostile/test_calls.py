"""Hostile call envelopes and arguments (kite.calls, kite.arguments).

A served call's options ``{kite, authentication, withArgs, responseCallback}`` can hold any
JSON. ``serve_call`` never raises and always answers ``{"error", "result"}`` once through the
response callback; the ``Arguments``/``Value`` accessors return their type or raise
``ArgumentError``.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kite import testutil
from kite.arguments import Arguments, Value
from kite.calls import serve_call
from kite.client import Client
from kite.errors import ArgumentError
from kite.wire import dnode

from .strategies import examples, json_values, nested, parses_or_refuses

#: Every typed getter of :class:`Value`.
GETTERS = ("one", "must_slice", "must_map", "must_string", "must_float64", "must_int", "must_bool", "must_function")


def exercise(value):
    """Every accessor of ``Value(value)`` and ``Arguments(value)``; only ArgumentError may escape each."""
    v = Value(value)
    for name in GETTERS:
        parses_or_refuses(getattr(v, name))
    parses_or_refuses(v.slice_of_length, 2)
    args = Arguments(value)
    len(args), bool(args), list(args)
    for index in (0, 1, -1):
        parses_or_refuses(args.__getitem__, index)


@examples(200)
@given(st.one_of(json_values, st.lists(json_values, max_size=3)))
def test_arguments_accessors_return_or_raise_argument_error(value):
    exercise(value)


@pytest.mark.parametrize("value", [10**400, -(10**400), [10**400], nested(990), [nested(990)]])
def test_regression_accessors_on_huge_and_deep_values(value):
    # float(10**400) raised OverflowError; repr() of a deep value in the message ran out of stack
    exercise(value)
    with pytest.raises(ArgumentError):
        Value(value).must_float64()


class Recorder:
    """The caller's response callback, encoding its argument as the connection's proxy does."""

    def __init__(self):
        self.replies = []

    def __call__(self, response):
        callbacks = {}
        wire = dnode.Scrubber().scrub([response], [], callbacks)
        dnode.encode_message(0, wire, callbacks)  # LocalProtocolError for what JSON cannot hold
        self.replies.append(response)


@pytest.fixture(scope="module")
def served():
    """A kite with authentication on and the handlers a hostile call reaches, plus a served client."""
    k = testutil.new_kite("hostile", username="alice")
    k.handle_func("square", lambda r: r.args.one().must_float64() ** 2)
    k.handle_func("echo", lambda r: r.args[0] if r.args else None)
    k.handle_func("open", lambda r: [r.username, list(r.args)]).disable_authentication()
    yield k
    k.close()


def served_client(k):
    client = Client(k)
    client._dialed = False  # as Kite.serve makes it: calls on it are authenticated
    return client


credentials = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "type": st.one_of(st.sampled_from(["kiteKey", "token", "", "sessionID"]), json_values),
            "key": st.one_of(st.sampled_from(["", "a.b.c", "...", "x" * 20000]), st.text(max_size=30), json_values),
        }
    ),
)


@examples(200)
@given(
    method=st.sampled_from(["square", "echo", "open", "kite.ping", "nosuch", ""]),
    kite=json_values,
    auth=credentials,
    with_args=json_values,
    extra=st.lists(json_values, max_size=2),
)
def test_serve_call_always_answers_once(served, method, kite, auth, with_args, extra):
    respond = Recorder()
    options = {"kite": kite, "authentication": auth, "withArgs": with_args, "responseCallback": respond}
    serve_call(served, served_client(served), method, [options, *extra])
    assert len(respond.replies) == 1
    error = respond.replies[0]["error"]
    assert error is None or isinstance(error["type"], str)


@examples(60)
@given(st.one_of(json_values, st.lists(json_values, max_size=3)))
def test_serve_call_without_a_callable_callback_never_raises(served, arguments):
    serve_call(served, served_client(served), "square", arguments if isinstance(arguments, list) else [arguments])


def test_regression_deep_authentication_fields_get_an_answer(served):
    # str() of a deep authentication type ran out of stack before any reply: the caller hung
    respond = Recorder()
    deep_auth = {"type": nested(990), "key": nested(990)}
    options = {"authentication": deep_auth, "withArgs": [2], "responseCallback": respond}
    serve_call(served, served_client(served), "square", [options])
    assert respond.replies[0]["error"]["type"] == "authenticationError"


def test_regression_echoing_a_deep_value_answers_with_an_error(served):
    # scrubbing a result nested too deeply raised RecursionError out of serve_call: no reply ever
    respond = Recorder()
    key = testutil.new_kite_key("alice")
    auth = {"type": "kiteKey", "key": key}
    options = {"authentication": auth, "withArgs": [nested(995)], "responseCallback": respond}
    serve_call(served, served_client(served), "echo", [options])
    assert respond.replies[0]["error"]["type"] == "genericError"
