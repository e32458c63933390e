"""Subprocesses for the tests: started from the project root, their output collected line by line."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import gevent
import pytest

from tests.kontrol.conftest import wait_until

ROOT = Path(__file__).resolve().parent.parent
#: Seconds a process may take to print what is waited for (a Python start-up is ~0.5 s).
OUTPUT_TIMEOUT = 20.0
#: Seconds a stopped process may take to exit.
STOP_TIMEOUT = 10.0


class Proc:
    """A subprocess from the project root, stdout and stderr collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.args = args
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        self._reader = gevent.spawn(self._read)

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def find(self, match: Callable[[str], bool], after: int = 0) -> str | None:
        return next((line for line in self.lines[after:] if match(line)), None)

    def wait_for(self, match: Callable[[str], bool], what: str, timeout: float = OUTPUT_TIMEOUT,
                 after: int = 0) -> str:
        """The first line (from line ``after`` on) ``match`` accepts; fails if the process exits first."""
        wait_until(lambda: self.find(match, after) is not None or self._reader.dead, timeout,
                   lambda: f"{self.args} never printed {what}; output:\n{self.output}")
        line = self.find(match, after)
        if line is None:
            pytest.fail(f"{self.args} exited ({self.proc.wait()}) without printing {what}; output:\n{self.output}")
        return line

    def exit_code(self, timeout: float = STOP_TIMEOUT) -> int:
        """Wait for the process to exit on its own; its exit status."""
        rc = self.proc.wait(timeout)
        self._reader.join(timeout)
        return rc

    def stop(self) -> int:
        """SIGTERM (SIGKILL after :data:`STOP_TIMEOUT`); the exit status."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL, as a crash would, and reap it."""
        self.proc.kill()
        self.proc.wait(STOP_TIMEOUT)
