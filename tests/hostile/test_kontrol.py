"""Hostile Kontrol input: queries, method arguments and the HTTP register body
(kontrol.storage.query, kontrol.handlers, kontrol.http).

Every answer to random JSON or bytes is a clear error (a ``GenericError`` or
``AuthenticationError`` to a kite caller, a 400/401 ``{"err"}`` over HTTP), never another
exception (a 500 traceback) and never a hang.
"""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kite import GenericError
from kite.client import Client
from kite.config import Config
from kite.request import Request
from kite.wire.protocol import PATH_FIELDS, Auth, KiteIdentity
from kontrol import Kontrol, handlers
from kontrol.http import register_answer
from kontrol.storage.version import Constraints

from .strategies import examples, json_texts, json_values, mutated, parses_or_refuses, scalars, to_json_text


@pytest.fixture(scope="module")
def kontrol():
    """A Kontrol on memory storage, not served: its handlers are called directly."""
    config = Config()
    config.username, config.ip, config.port = "koding", "127.0.0.1", 0
    k = Kontrol(config, "memory")
    yield k
    k.close()


@pytest.fixture(scope="module")
def alice_key(kontrol):
    return kontrol.register_user("alice")


#: Query field values: versions and constraints, near-versions, and garbage.
field_values = st.one_of(
    st.sampled_from(["", "alice", "prod", "math", "1.0.0", ">= 1.0, < 2.0", "~> 1.2", "1.0.0-beta+x", "a/b", "v1"]),
    st.text(alphabet="0123456789.-+~<>=!, vab", max_size=20),
    scalars,
)
query_fields = st.sampled_from([*PATH_FIELDS, "force", "x"])
queries = st.one_of(st.dictionaries(query_fields, field_values, max_size=8), json_values)


def query_or_error(obj):
    """Kontrol's reading of a received query: the query, or the GenericError its callers get."""
    query = handlers._query(obj)
    query.matches(KiteIdentity("math", "alice", "id", "prod", "eu", "1.2.3", "host"))
    query.scan_prefix()
    return query


@examples(200)
@given(queries)
def test_queries_parse_or_give_a_generic_error(obj):
    parses_or_refuses(query_or_error, obj)


@pytest.mark.parametrize(
    "version",
    [
        "1-" + "a" * 100_000 + "!",  # pre-release run: every split of it was tried (quadratic)
        "1" + "a" * 100_000 + "!",
        "1.1-a" + "-a" * 50_000 + "!",
        " " * 100_000 + "x",  # blanks around an empty operator: the same
        ">=" + " " * 100_000 + "1" + " " * 100_000 + "x",
    ],
)
def test_regression_long_versions_are_refused_in_linear_time(version):
    # Each took minutes before the fix (a 16 KB one ~50 s, holding Kontrol's hub); pytest's timeout guards.
    with pytest.raises(GenericError, match="Malformed"):
        query_or_error({"username": "alice", "environment": "prod", "name": "math", "version": version})


@examples(100)
@given(st.text(alphabet="0123456789.-+~<>=!, \tvab", max_size=60))
def test_constraints_parse_or_raise_value_error(text):
    constraints = parses_or_refuses(Constraints.parse, text, allowed=(ValueError,))
    if constraints is not None:
        constraints.check("1.2.3")
        constraints.check(text)


def call(kontrol, handler, args, auth=None, claimed=None):
    """``handler`` served for a caller claiming to be ``claimed`` (alice), as serve_call does it."""
    client = Client(kontrol.kite)
    client._dialed = False
    client.kite = KiteIdentity("app", "alice", "id-1", "prod", "eu", "1.0.0", "host") if claimed is None else claimed
    request = Request("m", args, kontrol.kite, client, username="alice", auth=auth)
    return handler(kontrol, request)


@examples(120)
@given(args=st.one_of(st.lists(st.one_of(queries, st.fixed_dictionaries({"query": queries}), json_values), max_size=2),
                      json_values),
       name=st.sampled_from(["getKites", "getToken", "register", "registerMachine", "cancelWatcher", "getKey"]))
def test_kontrol_methods_answer_or_raise_kite_errors(kontrol, alice_key, args, name):
    handler = {
        "getKites": handlers.handle_get_kites,
        "getToken": handlers.handle_get_token,
        "register": handlers.handle_register,
        "registerMachine": handlers.handle_register_machine,
        "cancelWatcher": handlers.handle_cancel_watcher,
        "getKey": handlers.handle_get_key,
    }[name]
    parses_or_refuses(call, kontrol, handler, args, Auth("kiteKey", alice_key))


@st.composite
def register_bodies(draw: st.DrawFn, key: str) -> bytes:
    """A /register body: the right shape with hostile parts, JSON of any shape, or bytes."""
    body = {
        "url": draw(st.one_of(st.sampled_from(["http://127.0.0.1:9/kite", "http://[::1", "x", ""]), json_values)),
        "kite": draw(st.one_of(st.fixed_dictionaries(dict.fromkeys(("name", "id", "region"), field_values)),
                               json_values)),
        "auth": draw(st.one_of(st.fixed_dictionaries({"type": st.just("kiteKey"), "key": st.one_of(
            st.just(key), mutated(st.just(key)), json_values)}), json_values)),
    }
    text = draw(st.one_of(st.just(to_json_text(body)), mutated(st.just(to_json_text(body))), json_texts))
    return draw(st.one_of(st.just(text.encode("utf-8", "surrogatepass")), st.binary(max_size=40)))


@examples(120)
@given(st.data())
def test_http_register_answers_a_clear_error(kontrol, alice_key, data):
    answer = register_answer(kontrol, data.draw(register_bodies(alice_key)))
    assert answer.status in (200, 400, 401), answer
    if answer.status != 200:
        assert isinstance(json.loads(answer.body)["err"], str)


@pytest.mark.parametrize(
    "body",
    [
        b"[" * 100_000,  # json.loads raised RecursionError: a 500
        json.dumps({"url": "http://[::1", "auth": {"type": "kiteKey"}}).encode(),  # urlsplit's ValueError: a 500
        # str() of a deep key could run out of stack (a 400 instead when json.loads gives up first)
        b'{"url": "http://h/kite", "auth": {"type": "kiteKey", "key": ' + b"[" * 990 + b"]" * 990 + b"}}",
    ],
)
def test_regression_register_bodies_that_gave_a_500(kontrol, body):
    assert register_answer(kontrol, body).status in (400, 401)


def test_regression_register_over_websocket_with_a_bad_ipv6_url(kontrol, alice_key):
    with pytest.raises(GenericError, match="invalid url"):
        call(kontrol, handlers.handle_register, [{"url": "http://[::1"}], Auth("kiteKey", alice_key))
