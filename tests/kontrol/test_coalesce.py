"""The group commit of kontrol.storage.coalesce, on a fake round trip (the storages that use it are
tested against real servers: test_txnbatch.py, test_postgres.py)."""

from __future__ import annotations

from collections.abc import Sequence

import gevent
import pytest
from gevent.event import Event

from kontrol.storage.coalesce import Coalescer


class Server:
    """A round trip that takes until ``release`` is set, recording each batch."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.release = Event()
        self.release.set()
        self.refuse: set[str] = set()
        self.down = False

    def run(self, items: Sequence[str]) -> list[str]:
        self.batches.append(list(items))
        self.release.wait()
        if self.down:
            raise ConnectionError("down")
        if self.refuse & set(items):
            raise ValueError("refused: " + ", ".join(sorted(self.refuse & set(items))))
        return [item.upper() for item in items]


def calls(coalescer: Coalescer, items: list[str]) -> list[gevent.Greenlet]:
    """Call with ``items[0]``, and with the rest once that call's round trip is under way."""
    jobs = [gevent.spawn(coalescer, items[0])]
    for _ in range(3):
        gevent.sleep(0)  # the caller queues, the sender starts the round trip
    jobs += [gevent.spawn(coalescer, item) for item in items[1:]]
    for _ in range(3):
        gevent.sleep(0)
    return jobs


def test_calls_made_together_go_together() -> None:
    server = Server()
    coalescer = Coalescer(server.run)
    jobs = [gevent.spawn(coalescer, item) for item in "abc"]
    gevent.joinall(jobs, raise_error=True)
    assert server.batches == [["a", "b", "c"]] and [job.value for job in jobs] == ["A", "B", "C"]


def test_calls_waiting_together_share_the_next_round_trip_and_get_their_own_results() -> None:
    server = Server()
    server.release.clear()
    coalescer = Coalescer(server.run)
    jobs = calls(coalescer, [f"k{i}" for i in range(10)])
    server.release.set()
    gevent.joinall(jobs, raise_error=True)
    assert [job.value for job in jobs] == [f"K{i}" for i in range(10)]
    assert server.batches == [["k0"], [f"k{i}" for i in range(1, 10)]]  # the first went before the rest came
    assert (coalescer.round_trips, coalescer.calls) == (2, 10)


def test_a_batch_holds_no_key_twice_and_no_more_than_max_size() -> None:
    server = Server()
    server.release.clear()
    coalescer = Coalescer(server.run, max_size=5, keys=lambda item: (item[0],), size=lambda item: len(item))
    jobs = calls(coalescer, ["first", "a1", "a2", "b1", "cc", "dd", "e"])
    server.release.set()
    gevent.joinall(jobs, raise_error=True)
    # a2 shares key "a" with a1; dd would make 6; both wait for the batch after, in their order.
    assert server.batches == [["first"], ["a1", "b1", "e"], ["a2", "cc"], ["dd"]]
    big = Coalescer(server.run, max_size=2, size=len)
    assert big("oversized") == "OVERSIZED"  # a call larger than max_size still goes, alone


def test_a_refused_batch_is_retried_a_call_at_a_time_so_only_the_bad_call_fails() -> None:
    server = Server()
    server.release.clear()
    server.refuse = {"bad"}
    coalescer = Coalescer(server.run, alone=lambda error: isinstance(error, ValueError))
    jobs = calls(coalescer, ["x", "a", "bad", "b"])
    server.release.set()
    gevent.joinall(jobs)
    assert [job.value for job in jobs] == ["X", "A", None, "B"]
    assert isinstance(jobs[2].exception, ValueError) and "bad" in str(jobs[2].exception)
    assert server.batches == [["x"], ["a", "bad", "b"], ["a"], ["bad"], ["b"]]


def test_an_outage_reaches_every_caller_of_the_batch_without_retries() -> None:
    server = Server()
    server.release.clear()
    server.down = True
    coalescer = Coalescer(server.run, alone=lambda error: isinstance(error, ValueError))
    jobs = calls(coalescer, ["x", "a", "b"])
    server.release.set()
    gevent.joinall(jobs)
    assert all(isinstance(job.exception, ConnectionError) for job in jobs)
    assert server.batches == [["x"], ["a", "b"]]
    server.down = False
    assert coalescer("later") == "LATER"  # the coalescer itself carries on


def test_several_senders_keep_several_batches_under_way() -> None:
    server = Server()
    server.release.clear()
    coalescer = Coalescer(server.run, senders=2)
    jobs = calls(coalescer, ["a", "b", "c", "d"])
    assert server.batches == [["a"], ["b", "c", "d"]]  # two under way at once
    assert not any(job.ready() for job in jobs)
    server.release.set()
    gevent.joinall(jobs, raise_error=True)
    assert [job.value for job in jobs] == ["A", "B", "C", "D"]


def test_a_round_trip_with_the_wrong_number_of_results_fails_its_callers() -> None:
    coalescer: Coalescer[str, str] = Coalescer(lambda items: ["only one"])
    assert coalescer("a") == "only one"
    jobs = [gevent.spawn(coalescer, item) for item in "bc"]
    gevent.joinall(jobs)
    assert all(isinstance(job.exception, RuntimeError) for job in jobs)


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError):
        Coalescer(lambda items: items, max_size=0)
    with pytest.raises(ValueError):
        Coalescer(lambda items: items, senders=0)
