"""The reverse proxy's table (kite.proxy.registry): URLs, ids, and who may hold an id."""

from __future__ import annotations

import pytest

from kite import ArgumentError
from kite.proxy.errors import KiteIdTakenError
from kite.proxy.registry import Registry, backend_bases

ID = "6f1c2b8e-4a8d-4c1e-9f7a-0d3b5e2a9c11"
URL = "http://10.0.4.17:6000/kite"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Peer:
    """Stands for a kite's connection to the proxy (only its identity matters here)."""


@pytest.mark.parametrize(("url", "ws", "http"), [
    ("http://10.0.4.17:6000/kite", "ws://10.0.4.17:6000/kite", "http://10.0.4.17:6000/kite"),
    ("https://k.example.com/kite/", "wss://k.example.com/kite", "http://k.example.com/kite"),
    ("ws://[::1]:6000/kite", "ws://[::1]:6000/kite", "http://[::1]:6000/kite"),
])
def test_backend_bases_keep_tls_for_websockets_and_use_http_otherwise(url, ws, http):
    assert backend_bases(url) == (ws, http)


@pytest.mark.parametrize("url", ["", "kite", "/kite", "file:///etc/passwd", "ftp://h/kite", "http:///kite",
                                 "http://u:p@h/kite", "http://h:99999/kite", "http://h/kite#x"])
def test_bad_backend_urls_are_argument_errors(url):
    with pytest.raises(ArgumentError):
        backend_bases(url)


@pytest.mark.parametrize("kite_id", ["", ".", "..", "a/b", "a b", "%2e", "x" * 129, "é"])
def test_ids_that_are_no_safe_path_segment_are_refused(kite_id):
    with pytest.raises(ArgumentError):
        Registry().add(kite_id, "alice", URL, Peer())


def test_the_same_user_replaces_an_entry_another_user_is_refused():
    registry = Registry()
    first, second = Peer(), Peer()
    old, replaced = registry.add(ID, "alice", URL, first)
    assert replaced is None and registry.get(ID) is old
    new, replaced = registry.add(ID, "alice", "http://10.0.4.18:6000/kite", second)
    assert replaced is old and registry.get(ID) is new
    with pytest.raises(KiteIdTakenError):
        registry.add(ID, "mallory", URL, Peer())
    assert registry.remove_client(first) == []  # the old connection closing leaves the new entry alone
    assert registry.remove_client(second) == [new] and registry.get(ID) is None


def test_a_removed_id_stays_reserved_to_its_user_for_a_while():
    clock = Clock()
    registry = Registry(reserve_seconds=60, clock=clock)
    backend, _ = registry.add(ID, "alice", URL, Peer())
    assert registry.remove(backend) and not registry.remove(backend)
    with pytest.raises(KiteIdTakenError):
        registry.add(ID, "mallory", URL, Peer())
    clock.now += 61
    taken, _ = registry.add(ID, "mallory", URL, Peer())
    assert registry.get(ID) is taken


def test_alice_gets_her_reserved_id_back():
    registry = Registry()
    backend, _ = registry.add(ID, "alice", URL, Peer())
    registry.remove(backend)
    again, _ = registry.add(ID, "alice", URL, Peer())
    assert registry.get(ID) is again


def test_reservations_are_bounded():
    registry = Registry(max_reservations=3)
    for i in range(10):
        backend, _ = registry.add(f"kite-{i}", "alice", URL, Peer())
        registry.remove(backend)
    assert list(registry._reserved) == ["kite-7", "kite-8", "kite-9"]
    registry.add("kite-0", "mallory", URL, Peer())  # its reservation was dropped, oldest first
