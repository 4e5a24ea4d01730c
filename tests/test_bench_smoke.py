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

from scripts.bench.scenarios import ALL_SCENARIOS, SCENARIOS
from scripts.bench.system import idle_states
from tests.conftest import ROOT, require_binary

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

    assert set(results["scenarios"]) == set(ALL_SCENARIOS)
    for scenario in SCENARIOS:
        r = results["scenarios"][scenario.name]
        assert r["expected_status"] == scenario.expected_status, scenario.name
        assert r["unexpected"] == 0, (scenario.name, r["statuses"], r["socket_errors"])
        assert set(r["statuses"]) == {str(scenario.expected_status)}, (scenario.name, r["statuses"])
        assert r["requests"] > 0, (scenario.name, r)
    assert results["scenarios"]["rs_verify"]["tokens_per_s"] > 0
    for name in ("bad_signature", "replay"):  # failure counting measured (wrk's in-flight tail adds a few calls)
        assert 0 < results["scenarios"][name]["ratelimit_calls_per_request"] < 2, results["scenarios"][name]
    assert "failure-counter Redis calls per refused request: bad_signature" in proc.stdout
    for name in ("miss", "hit", "bad_signature", "replay"):  # each answer is a write of its own, each request a read
        r = results["scenarios"][name]
        assert r["broker_reads_per_request"] >= 1 and r["broker_writes_per_request"] >= 1, (name, r)
    assert "broker read / write system calls per request: miss" in proc.stdout
    # A hit is one script call; so is a cold miss (its token signed ahead is stored by that call).
    for name in ("miss", "hit"):
        calls = results["scenarios"][name]["redis_calls_per_request"]
        assert calls["replay"] >= 1 and "token_cache" not in calls, (name, calls)
    assert "broker Redis calls per request: miss " in proc.stdout
    fixed = results["scenarios"]["fixed_rate"]  # its latency split: the generator alone, the broker's own time
    assert fixed["generator_alone"]["p99_ms"] > 0 and fixed["generator_alone"]["achieved_rps"] > 0, fixed
    assert fixed["in_broker"]["share_at_most_ms"]["inf"] == 1.0 and fixed["in_broker"]["p99_at_most_ms"] > 0, fixed
    # How late the generator itself started each request, in the broker's window and alone.
    for late in (fixed["generator_start_late"], fixed["generator_alone"]["start_late"]):
        assert set(late) == {"p99_ms", "max_ms", "share_over_1ms"} and 0 <= late["p99_ms"] <= late["max_ms"], fixed
    assert "how late the generator started requests: in the broker's window p99" in proc.stdout
    # Every request of the row made its one Redis call (op "replay"), timed as the broker awaits it.
    assert fixed["in_broker_redis"]["share_at_most_ms"]["inf"] == 1.0 and fixed["in_broker_redis"]["p99_at_most_ms"] > 0, fixed
    assert "the generator alone (no-op server" in proc.stdout and "inside the broker (its /token histogram)" in proc.stdout
    # The window's load and what the hypervisor took (steal, per core): every row has both cores.
    assert 0 < fixed["broker_cpu_share"] <= 1.5 and set(fixed["steal"]) >= {"core 0"}, fixed
    assert fixed["broker_cpu_us_per_request"] > 0 and fixed["broker_reads_per_request"] >= 1, fixed
    assert all(set(results["scenarios"][n]["steal"]) == set(fixed["steal"]) for n in ("miss", "hit")), results["scenarios"]["miss"]
    assert "the window's load: broker busy" in proc.stdout and "hypervisor steal per window (/proc/stat): miss core 0" in proc.stdout
    assert results["scenarios"]["redis_memory"]["bytes_per_jti"] > 0
    assert results["scenarios"]["memory"]["rss_kib_after"] > 0
    for part in ("verify_us", "verify_after_idle_us", "sign_us", "redis_set_nx_get_us", "dpop_proof_us"):
        assert results["ceiling"][part] > 0, part
    assert {"nproc", "cpu_model", "python", "idle"} <= set(results["machine"])
    # What an idle core does, as this machine's kernel shows it (None where it shows no cpuidle).
    idle = idle_states()
    assert (results["machine"]["idle"] is None) == (idle is None)
    assert ("idle cores: cpuidle driver" in proc.stdout) == (idle is not None)
    assert results["pinning"] and results["date"]
    assert "scenario" in proc.stdout and "ceiling" in proc.stdout  # the printed table
    # The targets, judged by the run: a smoke run measures the shares, the fixed rate and the
    # refusals; the tail is judged at 32 connections only (smoke runs fewer), and the before/after
    # ratio, the long RSS run and 2 workers need their options.
    statuses = [(t["target"].split(" ")[0], t["status"]) for t in results["targets"]]
    assert [s == "not measured" for _, s in statuses] == [False, False, True, True, False, False, True, True], statuses
    assert "round-2 targets (scripts/bench/targets.py):" in proc.stdout


@pytest.mark.timeout(180)
def test_bench_floor_smoke(tmp_path: Path) -> None:
    """``--compare-server floor``: the floor (the ceiling's work alone, behind uvicorn and on the raw
    protocol) answers every miss and hit request of the workload with a 200, in labelled rows."""
    _require("redis-server")
    _require("wrk")
    out = tmp_path / "latest.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--scenarios", "miss,hit", "--compare-log-level",
         "none", "--compare-server", "floor", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.read_text())
    for kind, label in (("floor", "floor"), ("floor_raw", "floor raw")):
        assert set(results[kind]) == {"miss", "hit"}, kind
        for name, r in results[kind].items():
            assert r["label"] == label
            assert r["unexpected"] == 0 and set(r["statuses"]) == {"200"} and r["requests"] > 0, (kind, name, r["statuses"])
    assert "broker / floor per CPU-second: miss" in proc.stdout and "broker / raw floor per CPU-second" in proc.stdout



@pytest.mark.timeout(180)
def test_bench_compare_rev_smoke(tmp_path: Path) -> None:
    """``--compare-rev``: another revision's broker (here this checkout's own commit: an A/A run)
    answers every miss and hit request with a 200 beside a fresh broker of this checkout, in
    alternated rounds; the ratios are printed and written, and the worktree is gone afterwards."""
    _require("redis-server")
    _require("wrk")
    out = tmp_path / "latest.json"
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "--smoke", "--scenarios", "miss,hit", "--compare-log-level",
         "none", "--compare-rev", "HEAD", "--compare-rounds", "2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=170,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    entry = json.loads(out.read_text())["revisions"]["HEAD"]
    assert (entry["commit"], entry["rounds"]) == (head.stdout.strip(), 2)
    for name in ("miss", "hit"):
        s = entry["scenarios"][name]
        for side in ("this", "other"):
            assert s[side]["unexpected"] == 0 and s[side]["rps_per_broker_cpu_s"] > 0, (name, side, s[side])
            assert len(s["each_round_per_cpu_s"][side]) == 2, s
        assert s["ratio_per_cpu_s"] > 0 and s["ratio_rps"] > 0, s
    assert f"this checkout / HEAD ({head.stdout.strip()[:12]}), medians of 2 alternated rounds:" in proc.stdout
    worktrees = subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True, check=True)
    assert "rev-" not in worktrees.stdout, worktrees.stdout
