"""The quick start: Kontrol, a kite registered to it, and a client that finds it through Kontrol.

    python -m examples.quickstart          (what `make run` does)

1. ``kontrol --initial`` writes a kite.key for the local user (signed by a key
   pair Kontrol generates and stores in its sqlite database);
2. ``kontrol`` serves on that sqlite storage;
3. the math kite (examples/math/server.py) starts and registers itself;
4. this process asks Kontrol for "math" kites of the local user and calls
   ``square`` on what it found, with the token Kontrol handed out.

Everything lives under ``$KITE_HOME`` (``make run`` points it at ``.kite-home`` in
the project, so your own ``~/.kite`` is left alone).
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import sys
import time

from kite import Kite, NoKitesAvailableError

ENVIRONMENT = "quickstart"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    user = getpass.getuser()
    port = free_port()
    env = {**os.environ, "KITE_ENVIRONMENT": ENVIRONMENT, "KONTROL_PORT": str(port), "KONTROL_IP": "127.0.0.1"}
    os.environ.update(env)
    kontrol_url = f"http://127.0.0.1:{port}/kite"
    print(f"KITE_HOME={os.environ.get('KITE_HOME', '~/.kite')}")

    kontrol_cmd = [sys.executable, "-m", "kontrol", "--storage", "sqlite", "--username", user,
                   "--kontrolurl", kontrol_url]
    subprocess.run([*kontrol_cmd, "--initial"], env=env, check=True)
    processes = [subprocess.Popen(kontrol_cmd, env=env)]
    try:
        processes.append(
            subprocess.Popen([sys.executable, "-m", "examples.math.server", "--port", "0", "--register"], env=env)
        )
        client_kite = Kite("math-cli", "1.0.0")  # reads the kite.key: Kontrol's URL and key
        deadline = time.monotonic() + 30
        while True:
            try:
                clients = client_kite.get_kites(username=user, environment=ENVIRONMENT, name="math")
                break
            except (NoKitesAvailableError, ConnectionError, TimeoutError) as exc:
                if time.monotonic() > deadline:
                    raise SystemExit(f"the math kite did not show up in Kontrol: {exc}") from exc
                time.sleep(0.3)
        print(f"found {len(clients)} math kite(s) through Kontrol at {kontrol_url}: {clients[0].url}")
        with clients[0] as math:
            for n in (2, 4, 12):
                print(f"square({n}) = {math.tell_with_timeout('square', 4, n):g}")
        client_kite.close()
    finally:
        for proc in reversed(processes):
            proc.terminate()
        for proc in processes:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
