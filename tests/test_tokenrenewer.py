"""TokenRenewer: renew before expiry, retry after failures, run only while connected (PROTOCOL.md §5.6).

The renewer reads "now" from a fake clock; its waits are real but short, so the
timings below are a fraction of a second.
"""

from __future__ import annotations

import gevent
import pytest

from kite import Auth, TokenRenewer, testutil
from kite.kontrolclient.tokenrenewer import MIN_RENEW_INTERVAL, RENEW_BEFORE, RETRY_INTERVAL
from tests.fakeclock import FakeClock

NOW = 1_800_000_000


@pytest.fixture(scope="module")
def math():
    k = testutil.new_kite("math", username="alice")
    k.handle_func("whoami", lambda r: r.username)
    with testutil.serve(k):
        yield k


@pytest.fixture
def client(math):
    c = testutil.new_kite("caller", username="bob").new_client(math.url)
    c.dial_timeout(5)
    yield c
    c.close()


def wait_for(predicate, timeout: float = 3.0) -> bool:
    with gevent.Timeout(timeout, False):
        while not predicate():
            gevent.sleep(0.01)
    return predicate()


def test_defaults_are_the_originals():
    assert (RENEW_BEFORE, RETRY_INTERVAL, MIN_RENEW_INTERVAL) == (30.0, 10.0, 1.0)


def test_schedule_follows_the_token_expiry(client):
    client.auth = Auth("token", testutil.new_token("bob", now=NOW, ttl=3600))
    clock = FakeClock(NOW)
    r = TokenRenewer(client, testutil.token_source(now=NOW + 100, ttl=3600), clock=clock)
    assert client.token_renewer is r
    assert r.valid_until == NOW + 3600
    assert r.renew_duration() == 3600 - RENEW_BEFORE
    clock.now = NOW + 3600
    assert r.renew_duration() == -RENEW_BEFORE  # overdue
    r.renew()
    assert r.valid_until == NOW + 100 + 3600
    assert r.renew_duration() == 100 + 3600 - RENEW_BEFORE - 3600


def test_min_interval_between_renewals(client):
    clock = FakeClock(NOW)
    r = TokenRenewer(client, testutil.token_source(now=NOW, ttl=10), clock=clock, renew_before=30)
    r.renew()  # a token that is already inside the renewal window
    assert r.renew_duration() == MIN_RENEW_INTERVAL


def test_unparsable_tokens_are_refused(client):
    client.auth = Auth("token", "garbage")
    with pytest.raises(ValueError, match="cannot parse token"):
        TokenRenewer(client, testutil.token_source())
    client.auth = Auth("token", testutil.new_token(exp=None))
    with pytest.raises(ValueError, match="invalid exp claim"):
        TokenRenewer(client, testutil.token_source())
    client.auth = None
    r = TokenRenewer(client, lambda c: "not a token")
    assert r.valid_until == 0  # no token yet: renew at once
    with pytest.raises(ValueError, match="cannot parse token"):
        r.renew()
    assert client.auth is None


def test_renew_installs_the_token_and_runs_handlers(client):
    client.auth = Auth("kiteKey", "k")  # whatever it was, a token takes its place
    renewed = []
    client.on_token_renew(renewed.append)
    source = testutil.token_source()
    r = TokenRenewer(client, source)
    token = r.renew()
    assert client.auth == Auth("token", token) and renewed == [token] == source.issued
    # A stale renewal request after someone else renewed fetches nothing.
    assert r.renew(stale="an older token") == token
    assert len(source.issued) == 1


def test_loop_renews_before_expiry(client):
    clock = FakeClock(NOW)
    client.auth = Auth("token", testutil.new_token(now=NOW - 3600, ttl=3600 + RENEW_BEFORE + 0.2))
    source = testutil.token_source(now=NOW, ttl=3600)
    renewed = []
    client.on_token_renew(renewed.append)
    r = TokenRenewer(client, source, clock=clock)
    r.renew_when_expires()  # already connected: starts now
    r.renew_when_expires()  # idempotent
    assert not renewed
    assert wait_for(lambda: renewed)  # due 0.2 s (fake) from now; the wait is real
    gevent.sleep(0.1)
    assert renewed == source.issued and len(renewed) == 1  # next one in ~1 h
    r.stop()


def test_failures_are_retried(client):
    attempts = []

    def flaky(c):
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("kontrol is down")
        return testutil.new_token(ttl=3600)

    client.auth = Auth("token", testutil.new_token(ttl=1))  # due at once (renew_before 30 s)
    r = TokenRenewer(client, flaky, retry_interval=0.05, retry_pause=0.01)
    r.renew_when_expires()
    assert wait_for(lambda: len(attempts) == 3 and client.auth.key != "")
    assert wait_for(lambda: r.valid_until > 0 and r.renew_duration() > 3000)
    r.stop()


def test_loop_runs_only_while_connected(math):
    caller = testutil.new_kite("caller", username="bob")
    c = caller.new_client(math.url)
    clock = FakeClock(NOW)
    c.auth = Auth("token", testutil.new_token(now=NOW, ttl=3600))
    r = TokenRenewer(c, testutil.token_source(now=NOW, ttl=3600), clock=clock)
    r.renew_when_expires()
    assert r._loop is None  # not connected: nothing runs
    c.dial_forever().wait(5)
    assert wait_for(lambda: r._loop is not None and not r._loop.dead)
    first = r._loop
    math.close_sessions()  # the server drops us; the client redials
    assert wait_for(lambda: first.dead)
    assert wait_for(lambda: r._loop is not first and not r._loop.dead, timeout=5)
    c.close()
    assert wait_for(lambda: r._loop.dead)
