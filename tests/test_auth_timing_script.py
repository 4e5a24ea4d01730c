"""``scripts/auth_timing.py`` (the measurement docs/security.md quotes for the timing oracle) still
runs against today's broker: a few requests per path, output shape only (no timing is asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_auth_timing_script_runs_every_path() -> None:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "auth_timing.py"), "--requests", "20"],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    paths = [line.split(" median")[0].strip() for line in out.stdout.splitlines() if " median " in line]
    assert paths == ["unknown client", "disabled client", "unknown kid", "bad signature"]
