"""Running the real ``kitecli`` console script in a subprocess, against kites served in this process."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
#: The console script `pip install -e .` made next to this interpreter.
KITECLI = Path(sys.executable).with_name("kitecli")
#: Seconds one kitecli run may take before the test fails.
RUN_TIMEOUT = 60


@dataclass
class Result:
    code: int
    out: str
    err: str

    @property
    def lines(self) -> list[str]:
        return self.out.splitlines()


def kitecli(*args: str, env: dict[str, str] | None = None, stdin: str | None = None) -> Result:
    """Run ``kitecli ARGS…`` (stdin not a terminal, stdout piped); the test process's KITE_HOME applies."""
    if not KITECLI.exists():
        pytest.fail(f"{KITECLI} is missing: run `make deps` (pip install -e .)", pytrace=False)
    proc = subprocess.run([str(KITECLI), *args], cwd=ROOT, env={**os.environ, **(env or {})},
                          input=stdin or "", capture_output=True, text=True, timeout=RUN_TIMEOUT)
    assert "Traceback" not in proc.stderr, proc.stderr
    return Result(proc.returncode, proc.stdout, proc.stderr)
