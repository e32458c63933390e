import pytest

from kite.arguments import Arguments, Value
from kite.errors import ArgumentError, RequestLimitError
from kite.method import RETURN_FIRST, RETURN_LATEST, HandlerFunc, Method, TokenBucket


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_token_bucket_starts_full_and_refills():
    clock = FakeClock()
    b = TokenBucket(0.1, 3, clock=clock)
    assert [b.take() for _ in range(4)] == [True, True, True, False]
    clock.now = 0.1
    assert b.take() and not b.take()
    clock.now = 100
    assert [b.take() for _ in range(4)] == [True, True, True, False]


def test_bucket_rejects_bad_settings():
    with pytest.raises(ValueError):
        TokenBucket(0, 1)
    with pytest.raises(ValueError):
        TokenBucket(1, 0)


def test_only_first_throttle_counts():
    m = Method("m", HandlerFunc(lambda r: 1), True).throttle(1, 1).throttle(1, 100)
    assert m.bucket.capacity == 1
    m.serve(None, [], [])
    with pytest.raises(RequestLimitError):
        m.serve(None, [], [])


def h(value):
    return HandlerFunc(lambda r: value)


@pytest.mark.parametrize(
    "mode, pre, handler, post, expected",
    [
        (0, [None, "p"], "h", ["q"], "h"),
        (RETURN_FIRST, [None, "p"], "h", ["q"], "p"),
        (RETURN_FIRST, [None], None, [None, "q"], "q"),
        (RETURN_LATEST, ["p"], "h", ["q", None], None),
        (RETURN_LATEST, ["p"], "h", [], "h"),
    ],
)
def test_return_modes(mode, pre, handler, post, expected):
    m = Method("m", h(handler), False).handling(mode)
    for v in pre:
        m.pre_handle(h(v))
    assert m.serve(None, [], [h(v) for v in post]) == expected


def test_unknown_handling_rejected():
    with pytest.raises(ValueError):
        Method("m", h(1), False).handling(7)


def test_arguments_helpers():
    a = Arguments([4, "x", {"k": 1}, [1], True])
    assert len(a) == 5 and a[1] == "x" and list(a)[0] == 4
    n, s, m, sl, b = a.slice_of_length(5)
    assert n.must_float64() == 4.0 and n.must_int() == 4 and s.must_string() == "x"
    assert m.must_map() == {"k": 1} and sl.one().raw == 1 and b.must_bool() is True
    with pytest.raises(ArgumentError, match="Invalid array length"):
        a.one()
    with pytest.raises(ArgumentError, match="expected number, got string"):
        s.must_float64()
    with pytest.raises(ArgumentError):
        Value(True).must_float64()
    with pytest.raises(ArgumentError, match="Cannot unmarshal nil argument"):
        Arguments(None).one()
    with pytest.raises(ArgumentError):
        Value(1).must_function()
    assert Value(len).must_function() is len
    assert Arguments(5)[0] == 5 and len(Arguments(None)) == 0
    with pytest.raises(ArgumentError):
        Arguments([])[0]
