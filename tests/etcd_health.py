"""Waiting for a freshly started etcd, shared by the test fixtures and the Kontrol benchmark."""

from __future__ import annotations

import subprocess
import time

import gevent
import requests


def wait_until_healthy(url: str, process: subprocess.Popen, timeout: float) -> str | None:
    """Poll the etcd at ``url`` until it is healthy and serves the v2 API: ``None`` then, else why not
    (the process exited, or ``timeout`` seconds passed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"etcd exited with {process.returncode}"
        try:
            health = requests.get(url + "/health", timeout=1).json()
            if health.get("health") == "true" and requests.get(url + "/v2/keys", timeout=1).ok:
                return None
        except (requests.RequestException, ValueError):
            pass
        gevent.sleep(0.05)
    return f"etcd did not become healthy in {timeout:g} s"
