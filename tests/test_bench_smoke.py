"""The benchmark (``scripts/bench.py``, docs/performance.md) runs end to end: a seconds-long smoke.

No timed assertions: the machine is shared and CI runners are noisy. The smoke proves that the
command starts Redis and the broker, registers clients through the admin API, drives every
scenario, and that every response had the status the scenario expects (zero unexpected non-2xx).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import require_binary

ROOT = Path(__file__).resolve().parent.parent
HTTP_SCENARIOS = ("miss", "hit", "bad_signature", "replay", "fixed_rate")
EXPECTED_STATUS = {"miss": 200, "hit": 200, "bad_signature": 401, "replay": 401, "fixed_rate": 200}

pytestmark = [pytest.mark.live, pytest.mark.redis]


def _require(tool: str) -> None:
    require_binary(tool, "the benchmark smoke", f"apt-get install {tool}")


@pytest.mark.timeout(180)
def test_bench_smoke(tmp_path: Path) -> None:
    _require("redis-server")
    _require("wrk")
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())

    assert set(results["scenarios"]) == {*HTTP_SCENARIOS, "rs_verify", "redis_memory", "memory"}
    for name in HTTP_SCENARIOS:
        r = results["scenarios"][name]
        assert r["expected_status"] == EXPECTED_STATUS[name], name
        assert r["unexpected"] == 0, (name, r["statuses"], r["socket_errors"])
        assert set(r["statuses"]) == {str(EXPECTED_STATUS[name])}, (name, r["statuses"])
        assert r["requests"] > 0, (name, r)
    assert results["scenarios"]["rs_verify"]["tokens_per_s"] > 0
    assert results["scenarios"]["redis_memory"]["bytes_per_jti"] > 0
    assert results["scenarios"]["memory"]["rss_kib_after"] > 0
    for part in ("verify_us", "sign_us", "redis_set_nx_get_us"):
        assert results["ceiling"][part] > 0, part
    assert {"nproc", "cpu_model", "python"} <= set(results["machine"])
    assert results["pinning"] and results["date"]
    assert "scenario" in proc.stdout and "ceiling" in proc.stdout  # the printed table
