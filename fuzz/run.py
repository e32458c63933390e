"""Run every fuzz harness (``fuzz/fuzz_*.py``) for a while each and report: ``make fuzz``.

Usage: ``python fuzz/run.py --seconds S [--only NAME]``. Each harness runs in its own
subprocess with libFuzzer's ``-max_total_time=S``; its corpus and any crash or timeout
input go to a temporary directory (printed, and kept only when something crashed), never
into the tree. Prints one line per harness: inputs run (libFuzzer's ``Done N runs`` /
``#N DONE``), and ``ok`` or ``CRASH``. Exits 1 when a harness crashed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

#: The folder of the harnesses.
FUZZ_DIR = Path(__file__).resolve().parent
#: libFuzzer's last words on a run: "Done 12345 runs in 60 second(s)", or the "#12345 DONE" stats line.
_DONE = re.compile(r"^Done (\d+) runs|^#(\d+)\s+DONE", re.MULTILINE)
#: Any stats line ("#4096 pulse ..."), for a run that ended without its DONE line (a crash).
_STATS = re.compile(r"^#(\d+)\s", re.MULTILINE)
#: Seconds one input may take before libFuzzer reports it as a hang.
INPUT_TIMEOUT = 10
#: Memory one harness may use, MB.
RSS_LIMIT_MB = 2048


def harnesses(only: str | None) -> list[Path]:
    """The harness files, all or the one named (``dnode`` or ``fuzz_dnode``)."""
    found = sorted(FUZZ_DIR.glob("fuzz_*.py"))
    if only:
        found = [p for p in found if p.stem in (only, f"fuzz_{only}")]
    return found


def runs_in(output: str) -> int:
    """How many inputs libFuzzer says it ran."""
    done = _DONE.findall(output)
    if done:
        return max(int(a or b) for a, b in done)
    stats = _STATS.findall(output)
    return max(map(int, stats)) if stats else 0


def run_one(harness: Path, seconds: int, workdir: Path) -> tuple[int, bool, str]:
    """Run ``harness`` for ``seconds``; ``(inputs run, crashed, libFuzzer's output)``."""
    corpus = workdir / harness.stem / "corpus"
    artifacts = workdir / harness.stem / "artifacts"
    corpus.mkdir(parents=True)
    artifacts.mkdir(parents=True)
    command = [
        sys.executable,
        str(harness),
        f"-max_total_time={seconds}",
        f"-timeout={INPUT_TIMEOUT}",
        f"-rss_limit_mb={RSS_LIMIT_MB}",
        f"-artifact_prefix={artifacts}/",
        "-print_final_stats=1",
        str(corpus),
    ]
    env = {**os.environ, "KITE_HOME": str(workdir / "kite_home"), "PYTHONDONTWRITEBYTECODE": "1"}
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True, errors="replace",
                          timeout=seconds * 3 + 120)
    output = proc.stdout + proc.stderr
    return runs_in(output), proc.returncode != 0, output


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=60, help="seconds per harness (default 60)")
    parser.add_argument("--only", help="run only this harness (e.g. dnode)")
    args = parser.parse_args(argv)
    selected = harnesses(args.only)
    if not selected:
        parser.error(f"no harness named {args.only!r}")
    workdir = Path(tempfile.mkdtemp(prefix="kite-fuzz-"))
    print(f"corpora and artifacts in {workdir}")
    crashed = []
    for harness in selected:
        runs, crash, output = run_one(harness, args.seconds, workdir)
        print(f"{harness.stem:24} {runs:>10} inputs  {'CRASH' if crash else 'ok'}", flush=True)
        if crash:
            crashed.append(harness.stem)
            print(output[-4000:], file=sys.stderr)
    if crashed:
        print(f"crashed: {', '.join(crashed)}; inputs kept in {workdir}")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
