"""The atheris harnesses of ``fuzz/`` stay runnable: each one's ``TestOneInput`` takes a handful
of seed inputs without raising, outside atheris's engine (skipped without atheris)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from kite import testutil

atheris = pytest.importorskip("atheris")

#: The harness files.
HARNESSES = sorted((Path(__file__).resolve().parents[2] / "fuzz").glob("fuzz_*.py"))

SEEDS = [
    b"",
    b"\x00",
    b"{}",
    b"[]",
    b"[" * 5000,
    b"\xff\xfe\x00",
    json.dumps({"method": "square", "arguments": [{"withArgs": [3], "responseCallback": "[Function]",
                                                   "authentication": {"type": "token", "key": "a.b.c"}}],
                "callbacks": {"0": [0, "responseCallback"]}}).encode(),
    json.dumps({"method": "echo", "arguments": [{"withArgs": [[1e308, 10**30, "x"]], "responseCallback": "[Function]"}],
                "callbacks": {"1" * 5000: [0, "responseCallback"]}}).encode(),
    b'a["x","y"]\n',
    b'c[3000,"Go away!"]',
    b'["m1", 2]',
    json.dumps({"username": "alice", "environment": "prod", "name": "math", "version": ">= 1.0, < 2"}).encode(),
    b"K" + b"http://127.0.0.1:9/kite",
    json.dumps({"url": "http://[::1", "kite": {}, "auth": {"type": "kiteKey", "key": "x"}}).encode(),
    bytes((0x81, 0x85, 1, 2, 3, 4)) + bytes(b ^ m for b, m in zip(b"hello", b"\x01\x02\x03\x04\x01", strict=True)),
    bytes((0x88, 0x02, 0x03, 0xE8)),
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
    b"HTTP/1.1 403 Forbidden\r\nContent-Length: 99999999999\r\n\r\nno",
]


def load(path: Path):
    if str(path.parent) not in sys.path:
        sys.path.insert(0, str(path.parent))  # as when run as a script: its folder's harness.py
    spec = importlib.util.spec_from_file_location(f"fuzz_harness_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def signed_seeds():
    """Seeds that need a signature: a genuine token and kite key of the test Kontrol."""
    return [testutil.new_token("alice", "/alice").encode(), testutil.new_kite_key("alice").encode()]


def test_there_is_a_harness_per_parser_family():
    names = {path.stem for path in HARNESSES}
    assert {"fuzz_dnode", "fuzz_sockjs", "fuzz_arguments", "fuzz_calls", "fuzz_jwt", "fuzz_kontrol_query",
            "fuzz_kontrol_register", "fuzz_wsframes", "fuzz_wshandshake", "fuzz_protocol"} <= names


@pytest.mark.parametrize("path", HARNESSES, ids=lambda path: path.stem)
def test_harness_takes_the_seeds(path, signed_seeds):
    harness = load(path)
    assert 'harness.fuzz(TestOneInput)' in path.read_text()  # what running it as a script does
    for seed in [*SEEDS, *signed_seeds]:
        harness.TestOneInput(seed)
