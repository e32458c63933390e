"""Run the test suite as a few pytest processes at once (``make test``): ``python tests/parallel.py [PYTEST ARGS]``.

Most tests wait -- on sockets, subprocesses, timers, etcd and PostgreSQL -- so one pytest
process leaves the CPUs idle most of the time; a few side by side finish the suite in about
half the time. (pytest-xdist cannot be used: its workers talk to the controller over execnet
threads, which the suite's gevent monkey-patching turns into greenlets that block forever.)

Each group is its own pytest process with its own ``--basetemp`` (pytest would otherwise clean
up the numbered temporary folders of the others), its output kept in a file and printed whole
when it ends, in the order the groups finish. The exit status is the first non-zero one of the
groups (0 when all passed). Extra arguments go to every group (``-x``, ``-k EXPR``...).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: The groups, by the time they take (each a few minutes on the 2-core CI machine): Kontrol's
#: storage matrix; the fault suite, the proxies and the command line (many subprocesses); the rest.
GROUPS = {
    "kontrol": ["tests/kontrol"],
    "faults, proxies, kitecli": ["tests/faults", "tests/proxy", "tests/kitecli"],
    "kite, interop, edges, hostile": ["tests", "--ignore=tests/kontrol", "--ignore=tests/faults",
                                      "--ignore=tests/proxy", "--ignore=tests/kitecli"],
}


def main(extra: list[str]) -> int:
    scratch = Path(tempfile.mkdtemp(prefix="kite-tests-"))
    running = {}
    for i, (name, paths) in enumerate(GROUPS.items()):
        log = open(scratch / f"group{i}.log", "w+")  # noqa: SIM115 - closed below, once the group ends
        cmd = [sys.executable, "-m", "pytest", *paths, f"--basetemp={scratch / f'tmp{i}'}", *extra]
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy())
        running[proc] = (name, log, time.monotonic())
    print(f"tests: {len(running)} pytest processes at once ({', '.join(GROUPS)}); output as each ends",
          flush=True)
    status = 0
    try:
        while running:
            for proc in [p for p in running if p.poll() is not None]:
                name, log, started = running.pop(proc)
                log.seek(0)
                print(f"\n===== {name}: exit {proc.returncode} after {time.monotonic() - started:.0f} s =====",
                      flush=True)
                sys.stdout.write(log.read())
                sys.stdout.flush()
                log.close()
                status = status or proc.returncode
            time.sleep(0.5)
    finally:
        for proc in running:  # interrupted: stop the others too
            proc.terminate()
        for proc in running:
            proc.wait()
        shutil.rmtree(scratch, ignore_errors=True)
    print(f"\ntests: {'all groups passed' if status == 0 else f'a group failed (exit {status})'}")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
