"""The benchmark's derived figures (``scripts/bench``), computed from what it reads: pure functions,
no processes."""

from __future__ import annotations

import math

import pytest

from scripts.bench.load import in_broker_latency


@pytest.mark.parametrize(("before", "after", "want"), [
    pytest.param({}, {0.001: 50, 0.005: 99, 0.01: 100, math.inf: 100}, (5.0, 0.01), id="p99-in-5ms-bucket"),
    pytest.param({0.001: 10, 0.005: 10, 0.01: 10, math.inf: 10}, {0.001: 110, 0.005: 110, 0.01: 110, math.inf: 110},
                 (1.0, 0.0), id="only-the-window-counts"),
    pytest.param({}, {0.001: 0, 0.005: 90, 0.01: 90, math.inf: 100}, (None, 0.1), id="tail-past-the-last-bound"),
    pytest.param({}, {}, (None, None), id="no-requests"),
])
def test_in_broker_latency_from_histogram_snapshots(before: dict[float, float], after: dict[float, float],
                                                    want: tuple[float | None, float | None]) -> None:
    got = in_broker_latency(before, after)
    assert (got["p99_at_most_ms"], got["share_over_5ms"]) == want


def test_compare_rev_medians_and_ratios() -> None:
    """``--compare-rev``: each side's figure is the median over its rounds; the ratio is this / other."""
    from types import SimpleNamespace

    from scripts.bench.revisions import NAMES, _entry, rows

    def run(per_cpu: float, unexpected: int = 0) -> SimpleNamespace:
        return SimpleNamespace(run=SimpleNamespace(rate=per_cpu - 10, rps_per_broker_cpu_s=per_cpu, p50_ms=1.0, p99_ms=2.0),
                               verdict=SimpleNamespace(unexpected=unexpected))

    runs = {"this": {n: [run(2000), run(3000), run(2100)] for n in NAMES},
            "other": {n: [run(1000), run(1050, unexpected=2), run(500)] for n in NAMES}}
    entry = _entry("a" * 40, 3, runs)  # type: ignore[arg-type]
    miss = entry["scenarios"]["miss"]
    assert (miss["this"]["rps_per_broker_cpu_s"], miss["other"]["rps_per_broker_cpu_s"]) == (2100, 1000)
    assert (miss["ratio_per_cpu_s"], miss["ratio_rps"], miss["other"]["unexpected"]) == (2.1, round(2090 / 990, 2), 2)
    assert miss["each_round_per_cpu_s"] == {"this": [2000, 3000, 2100], "other": [1000, 1050, 500]}
    assert rows({"HEAD~1": entry})[1] == ("  miss: 2100 / 1000 requests per broker CPU-second = x2.1; req/s 2090 / 990 = "
                                          "x2.11; p99 2.0 / 2.0 ms")
