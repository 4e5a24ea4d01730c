"""The performance targets of round 2, checked against one run's results.

``check`` reads the results document (the one written as JSON) and says, for each target, the
figure of this run and whether it is met, not met, or not measured by this run (with the option
that measures it). The table ends with these lines and the JSON holds them (``targets``), so a
run says by itself where the broker stands. Per broker CPU-second throughout, as the targets are
("per broker core"). Choices the targets leave open, made here:

- the closed-loop rows are the headline ones at 32 connections (miss, hit, bad signature, replay,
  dpop: the refusal rows on their ``[limiter observe]`` broker);
- "twice r4-base" needs ``--compare-rev 4897e12`` in the same run (the ratio of the medians of its
  alternated rounds); any other revision compared is reported, not judged;
- "RSS flat over 1 M requests" needs ``--rss-requests 1000000`` (or more): flat is at most 5%
  growth after the warm-up batch, every answer a 200;
- "2 workers" needs ``--workers 2``: the req/s of 2 unpinned workers against the pinned single
  worker of the same run.
"""

from __future__ import annotations

from typing import Any

#: The commit the round-2 targets were set against ("today's req/s": docs/performance.md).
R4_BASE = "4897e12"
MET, NOT_MET, NOT_MEASURED = "met", "not met", "not measured"
CLOSED_LOOP = ("miss", "hit", "bad_signature", "replay", "dpop")
RSS_FLAT_PCT = 5.0


def _row(target: str, figure: str, status: str) -> dict[str, str]:
    return {"target": target, "figure": figure, "status": status}


def _share(scenarios: dict[str, Any], name: str, goal: float) -> dict[str, str]:
    target = f"{name} >= {goal:.0%} of the ceiling per CPU-second"
    r = scenarios.get(name) or {}
    share = r.get("ceiling_share_per_cpu_s")
    if share is None:
        return _row(target, f"no {name} row", NOT_MEASURED)
    return _row(target, f"{share:.0%} ({r['rps_per_broker_cpu_s']:.0f} of {r['ceiling_rps']} /cpu-s)",
                MET if share >= goal else NOT_MET)


def _twice_base(revisions: dict[str, Any] | None) -> dict[str, str]:
    target = f"miss and hit 2x r4-base ({R4_BASE}) per CPU-second, same run"
    for entry in (revisions or {}).values():
        if entry["commit"].startswith(R4_BASE):
            ratios = {n: entry["scenarios"][n]["ratio_per_cpu_s"] for n in ("miss", "hit") if n in entry["scenarios"]}
            figure = ", ".join(f"{n} x{r}" for n, r in ratios.items()) + f" (medians of {entry['rounds']} rounds)"
            met = len(ratios) == 2 and all(r is not None and r >= 2.0 for r in ratios.values())
            return _row(target, figure, MET if met else NOT_MET)
    return _row(target, f"run with --compare-rev {R4_BASE}", NOT_MEASURED)


def _tail(scenarios: dict[str, Any]) -> dict[str, str]:
    target = "p99 <= 2.5 x p50 at 32 connections"
    ratios = {n: r["p99_ms"] / r["p50_ms"] for n in CLOSED_LOOP
              if (r := scenarios.get(n)) and r.get("p50_ms") and r.get("connections") == 32}
    if not ratios:
        return _row(target, "no closed-loop row at 32 connections", NOT_MEASURED)
    worst = max(ratios, key=ratios.__getitem__)
    return _row(target, f"worst {worst} {ratios[worst]:.2f}x ({len(ratios)} rows)",
                MET if ratios[worst] <= 2.5 else NOT_MET)


def steal_text(steal: dict[str, float] | None) -> str:
    """``core 0 3%, core 1 5%``: the share of a window the hypervisor took from each core."""
    return ", ".join(f"{core} {share:.0%}" for core, share in sorted((steal or {}).items()))


def _fixed_rate(scenarios: dict[str, Any]) -> dict[str, str]:
    target = "fixed rate at half the miss rate: p99 <= 5 ms"
    r = scenarios.get("fixed_rate")
    if not r:
        return _row(target, "no fixed_rate row", NOT_MEASURED)
    miss = (scenarios.get("miss") or {}).get("rps")
    half = f" (miss {miss:.0f}/s)" if miss else ""
    inside = (r.get("in_broker") or {}).get("p99_at_most_ms")
    within = f"; inside the broker p99 <= {inside} ms" if inside is not None else ""
    alone = (r.get("generator_alone") or {}).get("p99_ms")
    generator = f"; the generator alone {alone} ms" if alone is not None else ""
    busy = f"; broker busy {r['broker_cpu_share']:.2f} of its core" if r.get("broker_cpu_share") is not None else ""
    steal = f"; hypervisor steal {steal_text(r['steal'])}" if r.get("steal") else ""
    return _row(target, f"{r['offered_rps']:.0f}/s{half}: p99 {r['p99_ms']} ms end to end{within}{generator}{busy}{steal}",
                MET if r["p99_ms"] <= 5.0 else NOT_MET)


def _refusals(scenarios: dict[str, Any]) -> dict[str, str]:
    target = "bad signatures and replays no dearer than a hit (per CPU-second)"
    hit = (scenarios.get("hit") or {}).get("rps_per_broker_cpu_s")
    rows = {n: r["rps_per_broker_cpu_s"] for n in ("bad_signature", "replay")
            if (r := scenarios.get(n)) and r.get("rps_per_broker_cpu_s")}
    if not hit or len(rows) < 2:
        return _row(target, "needs the hit, bad_signature and replay rows", NOT_MEASURED)
    figure = ", ".join(f"{n} {v / hit:.2f}x a hit" for n, v in rows.items())
    return _row(target, figure, MET if all(v >= hit for v in rows.values()) else NOT_MET)


def _rss(scenarios: dict[str, Any]) -> dict[str, str]:
    target = f"RSS flat over 1 M requests (at most {RSS_FLAT_PCT:.0f}% growth after warm-up)"
    run = (scenarios.get("memory") or {}).get("long_run")
    if not run or run["requests"] < 1_000_000:
        done = f" (this run: {run['requests']} requests)" if run else ""
        return _row(target, f"run with --rss-requests 1000000{done}", NOT_MEASURED)
    figure = (f"{run['rss_kib_first_batch']} -> {run['rss_kib_last']} KiB ({run['change_pct_after_warmup']:+}%) over "
              f"{run['requests']} requests, {run['non_200']} not 200")
    flat = run["change_pct_after_warmup"] <= RSS_FLAT_PCT and run["non_200"] == 0
    return _row(target, figure, MET if flat else NOT_MET)


def _workers(workers: dict[str, Any] | None) -> dict[str, str]:
    target = "2 workers >= 1.6x one"
    if not workers or workers.get("workers") != 2:
        return _row(target, "run with --workers 2", NOT_MEASURED)
    speedups = {n: workers.get(f"{n}_speedup") for n in ("miss", "hit")}
    figure = ", ".join(f"{n} x{s}" for n, s in speedups.items())
    return _row(target, figure, MET if all(s is not None and s >= 1.6 for s in speedups.values()) else NOT_MET)


def check(results: dict[str, Any]) -> list[dict[str, str]]:
    scenarios = results.get("scenarios") or {}
    return [_share(scenarios, "miss", 0.60), _share(scenarios, "hit", 0.70), _twice_base(results.get("revisions")),
            _tail(scenarios), _fixed_rate(scenarios), _refusals(scenarios), _rss(scenarios),
            _workers(results.get("workers"))]


def rows(targets: list[dict[str, str]]) -> list[str]:
    if not targets:
        return []
    width = max(len(t["target"]) for t in targets)
    return ["", "round-2 targets (scripts/bench/targets.py):",
            *(f"  {t['status']:<13}{t['target']:<{width}}  {t['figure']}" for t in targets)]
