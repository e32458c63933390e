"""The import contracts of setup.cfg hold, and each one fails when its rule is broken.

``lint-imports`` checks the layers of DESIGN.md: ``kite.wire`` is pure and imports
only the error types, ``kite.transport`` stays below the runtime and the Kontrol
client, and ``kite`` never imports the apps built on it. Each breaking case plants
one offending import in a copy of the tree and expects exactly that contract to fail.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

LAYERS = "kite's layers"
WIRE_PURE = "kite.wire is pure"
STANDS_ALONE = "kite never imports the apps built on it"


def lint_imports(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(tree / "setup.cfg")],
        cwd=tree,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def broken_contracts(output: str) -> set[str]:
    names = (LAYERS, WIRE_PURE, STANDS_ALONE)
    return {name for name in names for line in output.splitlines() if line.startswith(name) and "BROKEN" in line}


def test_the_contracts_hold():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Contracts: 3 kept, 0 broken." in result.stdout


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    tree = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("kite", "kitecli", "kontrol"):
        shutil.copytree(ROOT / package, tree / package, ignore=ignore)
    shutil.copy(ROOT / "setup.cfg", tree / "setup.cfg")
    return tree


@pytest.fixture
def tree(pristine, tmp_path):
    copy = tmp_path / "tree"
    shutil.copytree(pristine, copy)
    return copy


@pytest.mark.parametrize(
    "module, line, contracts",
    [
        ("kite/wire/dnode.py", "import gevent", WIRE_PURE),
        ("kite/wire/sockjs.py", "import socket", WIRE_PURE),
        ("kite/wire/jws.py", "import time", WIRE_PURE),
        ("kite/wire/wsframes.py", "import threading", WIRE_PURE),
        ("kite/wire/protocol.py", "from flask import Flask", WIRE_PURE),
        # The runtime brings gevent along, so the purity contract breaks too.
        ("kite/wire/protocol.py", "from kite import client", {LAYERS, WIRE_PURE}),
        ("kite/wire/dnode.py", "from kite.transport import session", LAYERS),
        ("kite/transport/websocket.py", "from kite import connection", LAYERS),
        ("kite/transport/sockjs/server.py", "from kite.kontrolclient import errors", LAYERS),
        ("kite/errors.py", "from kite import config", {LAYERS, WIRE_PURE}),
        ("kite/connection.py", "from kite import client", LAYERS),
        # Kontrol imports the kite runtime back: a loop across the layers as well.
        ("kite/client.py", "import kontrol", {STANDS_ALONE, LAYERS}),
        ("kite/kite.py", "import kitecli", STANDS_ALONE),
        ("kite/placed_nowhere.py", "from kite import errors", LAYERS),
    ],
)
def test_a_broken_rule_fails_its_contract(tree, module, line, contracts):
    path = tree / module
    text = path.read_text() if path.exists() else '"""A module no layer lists."""\n'
    path.write_text(text + f"\n{line}  # planted by test_layers\n")
    result = lint_imports(tree)
    assert result.returncode != 0
    expected = contracts if isinstance(contracts, set) else {contracts}
    assert broken_contracts(result.stdout) == expected, result.stdout
