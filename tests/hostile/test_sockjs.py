"""Hostile SockJS frames on both sides (kite.wire.sockjs): what a server sends a dialing client
(``o``, ``h``, ``a[...]``, ``m"..."``, ``c[...]``) and what clients send a server (a JSON array
of strings per websocket message or ``xhr_send`` body). Each parses or raises ``RemoteProtocolError``."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kite.wire import sockjs

from .strategies import examples, json_texts, json_values, mutated, parses_or_refuses, texts_and_bytes, to_json_text

#: The messages a frame carries: mostly strings, sometimes not.
messages = st.lists(st.one_of(st.text(max_size=20), json_values), max_size=4)


@st.composite
def server_frames(draw: st.DrawFn) -> str:
    """A server frame of each kind, its payload of the right shape or nearly."""
    kind = draw(st.sampled_from(["o", "h", "a", "m", "c", "x", ""]))
    if kind in ("o", "h", ""):
        body = draw(st.sampled_from(["", "[]", " "]))
    elif kind == "a":
        body = to_json_text(draw(messages))
    elif kind == "m":
        body = to_json_text(draw(st.one_of(st.text(max_size=20), json_values)))
    elif kind == "c":
        body = to_json_text(draw(st.one_of(st.tuples(json_values, json_values).map(list), json_values)))
    else:
        body = draw(json_texts)
    return kind + body + draw(st.sampled_from(["", "\n", "\r\n", "\n\n"]))


@examples(150)
@given(texts_and_bytes(st.one_of(server_frames(), mutated(server_frames()))))
def test_decode_server_frame_parses_or_refuses(frame):
    result = parses_or_refuses(sockjs.decode_server_frame, frame)
    if result is not None:
        kind, payload = result
        assert kind in (sockjs.KIND_OPEN, sockjs.KIND_HEARTBEAT, sockjs.KIND_MESSAGES, sockjs.KIND_CLOSE)
        if kind == sockjs.KIND_MESSAGES:
            assert all(isinstance(m, str) for m in payload)


client_payloads = st.one_of(messages.map(to_json_text), json_texts)


@examples(150)
@given(texts_and_bytes(st.one_of(client_payloads, mutated(client_payloads))))
def test_decode_client_payload_parses_or_refuses(payload):
    result = parses_or_refuses(sockjs.decode_client_payload, payload)
    if result is not None:
        assert isinstance(result, list) and all(isinstance(m, str) for m in result)


@pytest.mark.parametrize("data", [None, 12, ["a"], {"a": 1}, memoryview(b"\xff"), bytearray(b'["x"]')])
def test_a_frame_of_the_wrong_type_is_refused_or_read(data):
    for parse in (sockjs.decode_server_frame, sockjs.decode_client_payload):
        parses_or_refuses(parse, data)


def test_round_trip_of_whatever_was_accepted():
    sent = ["a", "\ud800", "[Function]", json.dumps({"method": 0})]
    assert sockjs.decode_client_payload(sockjs.encode_client_payload(sent)) == sent
    assert sockjs.decode_server_frame(sockjs.encode_messages(sent)) == (sockjs.KIND_MESSAGES, sent)
