"""Hostile dnode messages, JSON and kite protocol shapes (kite.wire.dnode, .jsoncodec, .protocol).

``decode_message`` parses or raises ``RemoteProtocolError``; ``unscrub`` of whatever it
returned never raises. The protocol shapes raise their documented ``ValueError`` (their
callers turn it into ``InvalidResponseError``) and nothing else.
"""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kite.errors import RemoteProtocolError
from kite.wire import dnode, jsoncodec
from kite.wire.protocol import KiteIdentity, RegisterResult, parse_get_kites_result

from .strategies import (
    deep_text,
    examples,
    json_texts,
    json_values,
    mutated,
    nested,
    parses_or_refuses,
    texts_and_bytes,
    to_json_text,
)

#: Path steps: Go's ints, kite.js's decimal strings, and the ones that are neither.
path_steps = st.one_of(
    st.integers(-3, 5),
    st.sampled_from(["0", "1", "withArgs", "responseCallback", "-1", "1" * 5000, "\u0661", ""]),
    json_values,
)
#: Callback ids as object keys, valid and not.
callback_ids = st.one_of(st.integers(0, 2**64).map(str), st.sampled_from(["", "-1", "x", "1" * 5000, "\u0661", "0x1"]))


@st.composite
def dnode_messages(draw: st.DrawFn) -> str:
    """A call, a response or a callback invocation with hostile parts, as JSON text."""
    method = draw(st.one_of(st.sampled_from(["square", "kite.ping", ""]), st.integers(-1, 2**64), json_values))
    options = {
        "kite": draw(st.one_of(json_values, st.fixed_dictionaries({"name": json_values, "username": json_values}))),
        "authentication": draw(json_values),
        "withArgs": draw(json_values),
        "responseCallback": dnode.FUNCTION_PLACEHOLDER,
    }
    arguments = draw(st.one_of(st.just([options]), json_values))
    callbacks = draw(
        st.one_of(
            st.dictionaries(callback_ids, st.lists(path_steps, max_size=5), max_size=3),
            st.just({"0": [0, "responseCallback"]}),
            json_values,
        )
    )
    message = {"method": method, "arguments": arguments, "callbacks": callbacks}
    if draw(st.booleans()):
        message["links"] = draw(json_values)
    return to_json_text(message)


def decode_and_unscrub(text):
    """The receiving side of a connection: decode, then put proxies at the callback paths."""
    msg = dnode.decode_message(text)
    dnode.unscrub(msg.arguments, msg.callbacks, lambda cb_id: f"proxy {cb_id}")
    return msg


@examples(120)
@given(texts_and_bytes(st.one_of(dnode_messages(), mutated(dnode_messages()))))
def test_decode_message_parses_or_refuses(text):
    msg = parses_or_refuses(decode_and_unscrub, text)
    if msg is not None:
        assert isinstance(msg.method, (str, int)) and isinstance(msg.arguments, list)
        assert all(isinstance(k, int) and k >= 0 for k in msg.callbacks)


@examples(150)
@given(json_values, st.dictionaries(st.integers(0, 5), st.lists(path_steps, max_size=6), max_size=4))
def test_unscrub_never_raises_on_any_arguments_and_paths(arguments, callbacks):
    # decode_message only checks that steps are strings or ints; unscrub skips paths that lead nowhere.
    callbacks = {k: [s for s in path if type(s) in (str, int)] for k, path in callbacks.items()}
    dnode.unscrub([arguments], callbacks, lambda cb_id: cb_id)


@examples(150)
@given(texts_and_bytes(st.one_of(json_texts, mutated(json_texts))))
def test_jsoncodec_loads_raises_only_its_decode_errors(text):
    parses_or_refuses(jsoncodec.loads, text, allowed=jsoncodec.DECODE_ERRORS)


@examples(150)
@given(json_values)
def test_protocol_shapes_raise_only_value_error(value):
    KiteIdentity.from_wire(value)  # never raises: non-string fields are ""
    parses_or_refuses(RegisterResult.from_wire, value, allowed=(ValueError,))
    parses_or_refuses(parse_get_kites_result, value, allowed=(ValueError,))
    parses_or_refuses(parse_get_kites_result, {"kites": [value], "watcherID": value}, allowed=(ValueError,))
    parses_or_refuses(RegisterResult.from_wire, {"url": "u", "heartbeatInterval": value}, allowed=(ValueError,))


@examples(100)
@given(st.text(max_size=40))
def test_kite_identity_from_string_raises_only_value_error(path):
    parses_or_refuses(KiteIdentity.from_string, path, allowed=(ValueError,))
    parses_or_refuses(KiteIdentity.from_string, "/" + path, allowed=(ValueError,))


# -- the inputs that broke the parsers (regressions) -----------------------------------


@pytest.mark.parametrize(
    "text",
    [
        # int() refuses strings of over 4300 digits with a ValueError
        '{"method": "x", "arguments": [], "callbacks": {"' + "1" * 5000 + '": [0]}}',
        # repr() of the offending path ran out of stack
        '{"method": "x", "arguments": [], "callbacks": {"0": [' + deep_text(990) + "]}}",
        '{"method": "x", "arguments": [], "callbacks": {"0": {"a": ' + deep_text(990) + "}}}",
    ],
)
def test_regression_messages_that_raised_other_errors(text):
    with pytest.raises(RemoteProtocolError):
        dnode.decode_message(text)


def test_regression_unscrub_with_a_5000_digit_index_skips_the_path():
    arguments = [[1]]
    dnode.unscrub(arguments, {0: ["1" * 5000]}, lambda cb_id: "proxy")  # was ValueError from int()
    dnode.unscrub(arguments, {0: ["1" * 5000, 0]}, lambda cb_id: "proxy")
    assert arguments == [[1]]


def test_long_but_valid_indices_still_work():
    arguments = [[0, 1]]
    dnode.unscrub(arguments, {7: ["0", "00000000000000000001"]}, lambda cb_id: f"proxy {cb_id}")
    assert arguments == [[0, "proxy 7"]]
    assert dnode.decode_message('{"method": 1, "callbacks": {"18446744073709551615": [0]}}').callbacks == {
        2**64 - 1: [0]
    }


@pytest.mark.parametrize("interval", [float("inf"), float("nan"), float("-inf")])
def test_regression_register_result_with_a_non_finite_interval(interval):
    # int(inf) raised OverflowError (Python's JSON reader accepts Infinity)
    with pytest.raises(ValueError, match="heartbeatInterval"):
        RegisterResult.from_wire({"url": "u", "heartbeatInterval": interval})


def test_regression_get_kites_result_with_a_deep_entry():
    entry = nested(990)  # its repr() in the error message ran out of stack
    with pytest.raises(ValueError, match="malformed kite entry"):
        parse_get_kites_result({"kites": [entry]})
