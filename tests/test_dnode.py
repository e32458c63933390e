import json

import pytest

from kite.errors import LocalProtocolError, RemoteProtocolError
from kite.wire import dnode


def test_scrub_replaces_functions_with_go_style_paths():
    s = dnode.Scrubber()
    f, g = (lambda: 1), (lambda: 2)
    callbacks = {}
    out = s.scrub([1, {"a": f, "b": [2, g]}], [0, "withArgs"], callbacks)
    assert out == [1, {"a": "[Function]", "b": [2, "[Function]"]}]
    assert callbacks == {"0": [0, "withArgs", 1, "a"], "1": [0, "withArgs", 1, "b", 1]}
    assert s.get(0) is f and s.get(1) is g


def test_scrub_does_not_copy_values_without_functions():
    s = dnode.Scrubber()
    value = [1, {"a": [2, 3]}]
    assert s.scrub(value, [], {}) is value
    assert s.scrub((1, 2), [], {}) == [1, 2]


def test_callback_ids_are_never_reused():
    s = dnode.Scrubber()
    ids = [s.register(lambda: None) for _ in range(3)]
    s.remove(ids[2])
    assert s.allocate() == 3
    assert s.get(2) is None


def test_encode_message_key_order_and_compactness():
    text = dnode.encode_message("square", [{"withArgs": [4]}], {"0": [0, "responseCallback"]})
    assert text == '{"method":"square","arguments":[{"withArgs":[4]}],"callbacks":{"0":[0,"responseCallback"]}}'


def test_encode_rejects_unencodable_values():
    with pytest.raises(LocalProtocolError):
        dnode.encode_message(0, [object()], {})
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(LocalProtocolError):
            dnode.Scrubber().scrub([{"x": bad}], [], {})


def test_decode_accepts_kitejs_string_paths_and_ignores_links():
    text = json.dumps(
        {
            "arguments": [{"withArgs": ["[Function]"], "responseCallback": "[Function]"}],
            "callbacks": {"3": ["0", "withArgs", "0"], "4": ["0", "responseCallback"]},
            "links": [],
            "method": "callback",
        }
    )
    msg = dnode.decode_message(text)
    assert msg.method == "callback"
    assert msg.callbacks == {3: ["0", "withArgs", "0"], 4: ["0", "responseCallback"]}
    dnode.unscrub(msg.arguments, msg.callbacks, lambda i: ("proxy", i))
    assert msg.arguments == [{"withArgs": [("proxy", 3)], "responseCallback": ("proxy", 4)}]


def test_decode_numeric_method_and_defaults():
    msg = dnode.decode_message('{"method":12.0}')
    assert msg == dnode.Message(12, [], {})
    assert dnode.decode_message(b'{"method":0,"arguments":[null,"x"]}').arguments == [None, "x"]


@pytest.mark.parametrize(
    "text",
    [
        "",
        "not json",
        "[1,2]",
        '"str"',
        "{}",
        '{"method":true}',
        '{"method":null}',
        '{"method":1.5}',
        '{"method":-1}',
        '{"method":{}}',
        '{"method":"m","arguments":{}}',
        '{"method":"m","callbacks":[]}',
        '{"method":"m","callbacks":{"x":[0]}}',
        '{"method":"m","callbacks":{"-1":[0]}}',
        '{"method":"m","callbacks":{"1":"path"}}',
        '{"method":"m","callbacks":{"1":[{}]}}',
        '{"method":"m","callbacks":{"1":[true]}}',
        b"\xff\xfe",
        "[" * 100000,
    ],
)
def test_decode_garbage_raises_remote_protocol_error(text):
    with pytest.raises(RemoteProtocolError):
        dnode.decode_message(text)


def test_unscrub_skips_bad_paths_silently():
    args = [{"a": 1, "l": [0]}]
    callbacks = {1: [0, "missing"], 2: [5], 3: [0, "a", "x"], 4: [], 5: [0, "l", "9"], 6: [0, "l", "x"]}
    dnode.unscrub(args, callbacks, lambda i: i)
    assert args == [{"a": 1, "l": [0]}]


def test_unscrub_go_int_paths():
    args = [{"withArgs": [10, "[Function]"]}]
    dnode.unscrub(args, {6: [0, "withArgs", 1]}, lambda i: f"cb{i}")
    assert args == [{"withArgs": [10, "cb6"]}]


def test_whole_floats_are_written_like_go():
    s = dnode.Scrubber()
    value = [49.0, 2.5, {"x": -0.0, "big": 1e21, "n": 7}, True]
    out = s.scrub(value, [], {})
    assert out == [49, 2.5, {"x": 0, "big": 1e21, "n": 7}, True]
    assert type(out[0]) is int and type(out[2]["big"]) is float and out[3] is True
    text = dnode.encode_message(0, s.scrub([{"error": None, "result": 49.0}], [], {}), {})
    assert text == '{"method":0,"arguments":[{"error":null,"result":49}],"callbacks":{}}'
