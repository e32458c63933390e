"""The README's main job (`make run`) keeps working: Kontrol on sqlite, a registered kite, a client."""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_quickstart_finds_and_calls_the_math_kite_through_kontrol(tmp_path):
    env = {**os.environ, "KITE_HOME": str(tmp_path / "kite-home")}
    proc = subprocess.run(
        [sys.executable, "-m", "examples.quickstart"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=90
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "found 1 math kite(s) through Kontrol" in proc.stdout
    assert "square(12) = 144" in proc.stdout
    assert (tmp_path / "kite-home" / "kite.key").exists()
    assert (tmp_path / "kite-home" / "kontrol.db").exists()
