"""The benchmark's derived figures (``scripts/bench``), computed from what it reads: pure functions,
no processes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

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


def test_latency_buckets_read_the_token_endpoint_and_its_redis_call_from_the_brokers_metrics() -> None:
    """The fixed-rate row splits the broker's own tail: its ``/token`` histogram (successful
    answers only) and the token endpoint's Redis call (``op="replay"``), read from what the
    broker's real ``Metrics`` renders; other endpoints, outcomes and Redis ops are left out."""
    from app.metrics import REDIS_SECONDS, Metrics
    from app.web.metrics import record_request
    from scripts.bench.load import latency_buckets

    metrics = Metrics()
    for seconds in (0.0004, 0.003, 0.007):
        record_request(metrics, "/token", 200, seconds)
    record_request(metrics, "/token", 401, 0.0004)  # a refusal: not counted
    record_request(metrics, "/jwks", 200, 0.0004)  # another endpoint: not counted
    for seconds in (0.0002, 0.006):
        metrics.observe(REDIS_SECONDS, seconds, op="replay")
    metrics.observe(REDIS_SECONDS, 0.0002, op="registry")  # another op: not counted
    got = latency_buckets(metrics.render().decode().splitlines())
    assert (got["token"][0.0005], got["token"][0.005], got["token"][0.01], got["token"][math.inf]) == (1, 2, 3, 3)
    assert (got["redis"][0.0005], got["redis"][0.005], got["redis"][0.01], got["redis"][math.inf]) == (1, 1, 2, 2)
    assert in_broker_latency({}, got["redis"])["share_over_5ms"] == 0.5


@pytest.mark.parametrize(("late", "want"), [
    pytest.param([], {}, id="no-requests"),
    pytest.param([0.0001] * 100, {"p99_ms": 0.1, "max_ms": 0.1, "share_over_1ms": 0.0}, id="all-on-time"),
    pytest.param([0.0001] * 98 + [0.002, 0.0065], {"p99_ms": 6.5, "max_ms": 6.5, "share_over_1ms": 0.02},
                 id="two-late-one-by-6.5ms"),
    pytest.param([0.0002] * 180 + [0.0015] * 20, {"p99_ms": 1.5, "max_ms": 1.5, "share_over_1ms": 0.1}, id="a-tenth-late"),
])
def test_generator_start_lateness(late: list[float], want: dict[str, float]) -> None:
    from scripts.bench.load import start_lateness

    assert start_lateness(late) == want


def test_fixed_rate_line_on_the_generators_start_lateness() -> None:
    from scripts.bench.report import _fixed_rate_parts

    fixed = {"offered_rps": 1100, "p50_ms": 0.9, "p99_ms": 11.3,
             "generator_alone": {"p50_ms": 0.16, "p99_ms": 1.1, "start_late": {"p99_ms": 1.09, "max_ms": 3.47, "share_over_1ms": 0.0138}},
             "generator_start_late": {"p99_ms": 2.19, "max_ms": 8.37, "share_over_1ms": 0.0385}}
    assert _fixed_rate_parts({"fixed_rate": fixed})[1] == (
        "fixed 1100/s, how late the generator started requests: in the broker's window p99 2.19 ms, largest 8.37 ms, "
        "3.9% over 1 ms; alone p99 1.09 ms, largest 3.47 ms, 1.4% over 1 ms")


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


def _results(**parts: Any) -> dict[str, Any]:
    """A results document with the rows the targets read, every target met; ``parts`` replaces any."""
    def row(per_cpu: float, ceiling: int, p50: float = 10.0, p99: float = 20.0) -> dict[str, Any]:
        return {"rps": per_cpu, "rps_per_broker_cpu_s": per_cpu, "ceiling_rps": ceiling,
                "ceiling_share_per_cpu_s": round(per_cpu / ceiling, 2), "p50_ms": p50, "p99_ms": p99, "connections": 32}

    scenarios = {
        "miss": row(3100, 5000), "hit": row(3600, 5000), "bad_signature": row(3700, 5000), "replay": row(3600, 5000),
        "dpop": row(2000, 4000),
        "fixed_rate": {"offered_rps": 1550, "p99_ms": 4.8, "in_broker": {"p99_at_most_ms": 2.5}, "generator_alone": {"p99_ms": 1.2}},
        "memory": {"long_run": {"requests": 1_000_000, "non_200": 0, "rss_kib_first_batch": 80_000, "rss_kib_last": 81_000,
                                "change_pct_after_warmup": 1.2}},
    }
    revisions = {"4897e12": {"commit": "4897e12" + "0" * 33, "rounds": 5,
                             "scenarios": {"miss": {"ratio_per_cpu_s": 2.1}, "hit": {"ratio_per_cpu_s": 2.0}}}}
    doc = {"scenarios": scenarios, "revisions": revisions, "workers": {"workers": 2, "miss_speedup": 1.7, "hit_speedup": 1.6}}
    for key, value in parts.items():
        if key in scenarios or key in ("miss_row", "hit_row"):
            scenarios[key.removesuffix("_row")] = value
        elif value is None:
            doc.pop(key, None)
            scenarios.pop(key, None)
        else:
            doc[key] = value
    return doc


TARGET_CASES = [
    pytest.param({}, ["met"] * 8, id="all-met"),
    pytest.param({"hit": {"rps": 3400, "rps_per_broker_cpu_s": 3400, "ceiling_rps": 5000, "ceiling_share_per_cpu_s": 0.68,
                          "p50_ms": 10.0, "p99_ms": 20.0, "connections": 32}},
                 ["met", "not met", "met", "met", "met", "met", "met", "met"], id="hit-share-68%"),
    pytest.param({"revisions": {"4897e12": {"commit": "4897e12" + "0" * 33, "rounds": 3,
                                            "scenarios": {"miss": {"ratio_per_cpu_s": 2.01}, "hit": {"ratio_per_cpu_s": 1.66}}}}},
                 ["met", "met", "not met", "met", "met", "met", "met", "met"], id="hit-1.66x-base"),
    pytest.param({"revisions": {"HEAD~1": {"commit": "a" * 40, "rounds": 3,
                                           "scenarios": {"miss": {"ratio_per_cpu_s": 3.0}, "hit": {"ratio_per_cpu_s": 3.0}}}}},
                 ["met", "met", "not measured", "met", "met", "met", "met", "met"], id="another-revision-is-not-the-base"),
    pytest.param({"dpop": {"rps": 2000, "rps_per_broker_cpu_s": 2000, "ceiling_rps": 4000, "ceiling_share_per_cpu_s": 0.5,
                           "p50_ms": 10.0, "p99_ms": 25.1, "connections": 32}},
                 ["met", "met", "met", "not met", "met", "met", "met", "met"], id="one-row-p99-over-2.5x-p50"),
    pytest.param({"fixed_rate": {"offered_rps": 1550, "p99_ms": 5.92, "in_broker": {"p99_at_most_ms": 5.0}}},
                 ["met", "met", "met", "met", "not met", "met", "met", "met"], id="fixed-rate-p99-5.92ms"),
    pytest.param({"replay": {"rps": 3500, "rps_per_broker_cpu_s": 3500, "ceiling_rps": 5000, "ceiling_share_per_cpu_s": 0.7,
                             "p50_ms": 10.0, "p99_ms": 20.0, "connections": 32}},
                 ["met", "met", "met", "met", "met", "not met", "met", "met"], id="replay-dearer-than-a-hit"),
    pytest.param({"memory": {"long_run": {"requests": 1_000_000, "non_200": 0, "rss_kib_first_batch": 80_000,
                                          "rss_kib_last": 88_000, "change_pct_after_warmup": 10.0}}},
                 ["met", "met", "met", "met", "met", "met", "not met", "met"], id="rss-grew-10%"),
    pytest.param({"memory": {"long_run": {"requests": 80_000, "non_200": 0, "rss_kib_first_batch": 80_000,
                                          "rss_kib_last": 80_000, "change_pct_after_warmup": 0.0}}},
                 ["met", "met", "met", "met", "met", "met", "not measured", "met"], id="rss-run-too-short"),
    pytest.param({"workers": {"workers": 2, "miss_speedup": 1.77, "hit_speedup": 1.45}},
                 ["met", "met", "met", "met", "met", "met", "met", "not met"], id="two-workers-hit-1.45x"),
    pytest.param({"workers": None, "revisions": None, "fixed_rate": None, "memory": None},
                 ["met", "met", "not measured", "met", "not measured", "met", "not measured", "not measured"],
                 id="a-plain-run-measures-four"),
]


@pytest.mark.parametrize(("parts", "statuses"), TARGET_CASES)
def test_targets_are_judged_from_the_run(parts: dict[str, Any], statuses: list[str]) -> None:
    from scripts.bench.targets import check

    assert [t["status"] for t in check(_results(**parts))] == statuses


def test_target_lines_name_the_figures() -> None:
    from scripts.bench.targets import check, rows

    lines = rows(check(_results(hit={"rps": 3400, "rps_per_broker_cpu_s": 3400, "ceiling_rps": 5000,
                                     "ceiling_share_per_cpu_s": 0.68, "p50_ms": 10.0, "p99_ms": 20.0, "connections": 32})))
    assert lines[1] == "round-2 targets (scripts/bench/targets.py):"
    assert [line.rsplit("  ", 1)[-1].strip() for line in lines[2:]] == [
        "62% (3100 of 5000 /cpu-s)", "68% (3400 of 5000 /cpu-s)", "miss x2.1, hit x2.0 (medians of 5 rounds)",
        "worst miss 2.00x (5 rows)", "1550/s (miss 3100/s): p99 4.8 ms end to end; inside the broker p99 <= 2.5 ms; "
        "the generator alone 1.2 ms", "bad_signature 1.09x a hit, replay 1.06x a hit",
        "80000 -> 81000 KiB (+1.2%) over 1000000 requests, 0 not 200", "miss x1.7, hit x1.6"]


@pytest.mark.parametrize(("before", "after", "want"), [
    pytest.param({"core 0": (10, 1000), "core 1": (0, 1000)}, {"core 0": (40, 1100), "core 1": (0, 1100)},
                 {"core 0": 0.3, "core 1": 0.0}, id="a-third-taken-from-core-0"),
    pytest.param({"core 0": (10, 1000)}, {"core 0": (10, 1000)}, {}, id="no-ticks-no-share"),
    pytest.param({"core 0": (10, 1000)}, {"core 0": (15, 1010), "core 1": (3, 500)}, {"core 0": 0.5},
                 id="a-core-that-came-online-is-left-out"),
    pytest.param({}, {}, {}, id="no-proc-stat"),
])
def test_steal_shares_from_two_readings(before: dict[str, tuple[int, int]], after: dict[str, tuple[int, int]],
                                        want: dict[str, float]) -> None:
    from scripts.bench.system import steal_shares

    assert steal_shares(before, after) == want


def test_core_times_reads_every_online_core() -> None:
    """Linux only (the benchmark's machine): one (steal, all) pair per ``cpuN`` line of /proc/stat."""
    from scripts.bench.system import core_times

    stat = Path("/proc/stat").read_text().splitlines()
    lines = [ln.split()[0] for ln in stat if ln.startswith("cpu") and not ln.startswith("cpu ")]
    times = core_times()
    assert sorted(times) == sorted("core " + name[3:] for name in lines)
    assert all(0 <= steal <= total for steal, total in times.values())


@pytest.mark.parametrize(("files", "want_states", "want_line"), [
    pytest.param({"devices/system/cpu/cpuidle/current_driver": "haltpoll\n",
                  "devices/system/cpu/cpuidle/current_governor_ro": "haltpoll\n",
                  "module/haltpoll/parameters/guest_halt_poll_ns": "0\n"},
                 {"driver": "haltpoll", "governor": "haltpoll", "guest_halt_poll_ns": 0},
                 ["idle cores: cpuidle driver haltpoll, guest halt polling off (an idle core halts at once)"],
                 id="kvm-guest-polling-off"),
    pytest.param({"devices/system/cpu/cpuidle/current_driver": "haltpoll\n",
                  "module/haltpoll/parameters/guest_halt_poll_ns": "200000\n"},
                 {"driver": "haltpoll", "guest_halt_poll_ns": 200000},
                 ["idle cores: cpuidle driver haltpoll, guest halt polling up to 200 µs before a halt"],
                 id="kvm-guest-kernel-default-poll"),
    pytest.param({"devices/system/cpu/cpuidle/current_driver": "intel_idle\n",
                  "devices/system/cpu/cpuidle/current_governor_ro": "menu\n"},
                 {"driver": "intel_idle", "governor": "menu"},
                 ["idle cores: cpuidle driver intel_idle"], id="bare-metal-no-haltpoll"),
    pytest.param({}, None, [], id="no-cpuidle"),
])
def test_idle_states_and_their_header_line(tmp_path: Path, files: dict[str, str], want_states: dict[str, Any] | None,
                                           want_line: list[str]) -> None:
    """The header states what an idle core does: the fixed-rate row depends on it."""
    from scripts.bench.report import idle_line
    from scripts.bench.system import idle_states

    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    states = idle_states(tmp_path)
    assert states == want_states
    assert idle_line(states) == want_line


def test_fixed_rate_target_names_the_windows_load_and_steal() -> None:
    from scripts.bench.report import _fixed_rate_parts, _steal_rows
    from scripts.bench.targets import check, rows

    fixed = {"offered_rps": 1550, "p50_ms": 1.1, "p99_ms": 26.5, "in_broker": {"p99_at_most_ms": 25.0, "share_over_5ms": 0.0371},
             "in_broker_redis": {"p99_at_most_ms": 10.0, "share_over_5ms": 0.0288},
             "generator_alone": {"p50_ms": 0.16, "p99_ms": 1.88}, "broker_cpu_share": 0.71, "broker_cpu_us_per_request": 458,
             "steal": {"core 0": 0.22, "core 1": 0.3}}
    doc = _results(fixed_rate=fixed)
    line = rows(check(doc))[6]
    assert line.split()[:2] == ["not", "met"] and line.rsplit("  ", 1)[-1].strip() == (
        "1550/s (miss 3100/s): p99 26.5 ms end to end; inside the broker p99 <= 25.0 ms; the generator alone 1.88 ms; "
        "broker busy 0.71 of its core; hypervisor steal core 0 22%, core 1 30%")
    doc["scenarios"]["miss"]["steal"] = {"core 0": 0.02, "core 1": 0.125}
    assert _fixed_rate_parts(doc["scenarios"])[1] == (
        "fixed 1550/s, inside the broker (its /token histogram): p99 <= 25.0 ms, 3.71% of requests over 5 ms; "
        "its Redis call: p99 <= 10.0 ms, 2.88% over 5 ms")
    assert [*_fixed_rate_parts(doc["scenarios"])[2:], *_steal_rows(doc["scenarios"])] == [
        "fixed 1550/s, the window's load: broker busy 0.71 of its core (458 CPU µs per request; the miss row 323); "
        "hypervisor steal core 0 22%, core 1 30%",
        "hypervisor steal per window (/proc/stat): miss core 0 2%, core 1 12%; fixed_rate core 0 22%, core 1 30%"]



def test_profile_summary_puts_each_signature_and_parse_frame_where_it_belongs(tmp_path: Path) -> None:
    """py-spy's collapsed stacks (root first): the ECDSA work of ``token_broker_jose``'s algorithms
    and of joserfc's counts as the signature, the package's strict parsing as assertion parsing
    (its caller), and the event loop's epoll wait as idle."""
    from scripts.bench.profile import summarize_profile

    root = "main (/srv/app/__main__.py:1);ClientAuthenticator.run (/srv/app/service/client_auth.py:203)"
    raw = tmp_path / "profile.txt"
    raw.write_text("\n".join([
        f"{root};ClientAuthenticator._verify (/srv/app/service/client_auth.py:304);"
        "EcdsaAlgorithm.verify (/srv/packages/jose/token_broker_jose/jose.py:69) 50",
        f"{root};TokenSigner.sign (/srv/app/oauth/access_token.py:96);"
        "EcdsaAlgorithm.sign (/srv/packages/jose/token_broker_jose/jose.py:59) 20",
        f"{root};deserialize_compact (/v/site-packages/joserfc/jws.py:120);"
        "ESAlgorithm.verify (/v/site-packages/joserfc/_rfc7518/jws_algs.py:171) 10",
        f"{root};parse_assertion (/srv/app/oauth/assertion.py:150);"
        "strict_object (/srv/packages/jose/token_broker_jose/jose.py:181);"
        "JSONDecoder.raw_decode (/usr/lib/python3.11/json/decoder.py:353) 20",
        "Runner.run (/usr/lib/python3.11/asyncio/runners.py:118) 7",
    ]) + "\n")
    summary = summarize_profile(raw)
    assert (summary["samples"], summary["idle_samples_excluded"]) == (100, 7)
    assert summary["exclusive_pct"] == {
        "ECDSA verify (cryptography)": 60.0,
        "ECDSA sign (cryptography)": 20.0,
        "assertion parse + claim checks (app/oauth/assertion.py, jose.py)": 20.0,
    }
    assert summary["inclusive_pct"]["    ECDSA verify (cryptography)"] == 60.0
    assert summary["inclusive_pct"]["    ECDSA sign (cryptography)"] == 20.0
    assert summary["self_pct_by_area"] == {
        "token_broker_jose (ECDSA via cryptography, strict parsing)": 70.0,
        "Python stdlib (json, contextlib, abc, ...)": 20.0,
        "JWS signatures (cryptography via joserfc)": 10.0,
    }
