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
