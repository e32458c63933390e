"""A Kontrol process (:mod:`tests.faults.kontrol_server`) the fault tests SIGKILL and start again on the
same port, storage and key pair."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from kite.testkeys import KeyPair
from tests.faults.kontrol_server import READY
from tests.kontrol.conftest import FAST, free_port
from tests.processes import Proc

#: Kontrol's token lifetime and leeway in the fault tests (seconds): tokens expire within seconds,
#: so renewals happen all through a test.
TOKEN_TTL = 3.0
TOKEN_LEEWAY = 1.0
#: Seconds a storage request may take (the default is 5 s): faults are noticed quickly.
STORAGE_TIMEOUT = 1.5


class KontrolProcess:
    """Kontrol serving ``storage`` on a fixed free port of 127.0.0.1, with the key pair ``pair``
    (written under ``home``) and the :data:`FAST` registry timings."""

    def __init__(self, storage: str, pair: KeyPair, home: Path, storage_options: dict | None = None, *,
                 token_ttl: float = TOKEN_TTL, token_leeway: float = TOKEN_LEEWAY) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/kite"
        home.mkdir(parents=True, exist_ok=True)
        public, private = home / "key_pub.pem", home / "key.pem"
        public.write_text(pair.public_pem)
        private.write_text(pair.private_pem)
        self.settings = {
            "port": self.port,
            "storage": storage,
            "storage_options": storage_options or {},
            "public_key": str(public),
            "private_key": str(private),
            "registry": FAST,
            "token_ttl": token_ttl,
            "token_leeway": token_leeway,
        }
        self.env = {**os.environ, "KITE_HOME": str(home)}
        self.proc: Proc | None = None
        self.starts = 0

    def start(self) -> float:
        """Start Kontrol; returns the monotonic time it printed that it serves."""
        self.proc = Proc([sys.executable, "-m", "tests.faults.kontrol_server", json.dumps(self.settings)], self.env)
        self.proc.wait_for(lambda line: READY in line, "that it serves")
        self.starts += 1
        return time.monotonic()

    def kill(self) -> None:
        """SIGKILL (a crash)."""
        if self.proc is not None:
            self.proc.kill()

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    @property
    def output(self) -> str:
        return self.proc.output if self.proc is not None else ""
