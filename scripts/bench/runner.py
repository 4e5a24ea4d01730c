"""The runner: the HTTP scenarios of the table against a running broker, each judged against its
expected status and its ceiling; the cache check, the worker-scaling run and the long RSS run."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from scripts.bench.load import (
    generator_alone,
    in_broker_latency,
    post_token,
    redis_calls,
    run_fixed_rate,
    run_wrk,
    token_latency_buckets,
)
from scripts.bench.results import Ceiling, FixedRateRun, ScenarioResult, Verdict, WrkRun
from scripts.bench.scenarios import BY_NAME, Scenario
from scripts.bench.system import BrokerWindow, Pinning, log, rss_kib
from scripts.bench.workload import Workload, form
from scripts.processes import BrokerProcess, RedisServer, start_broker


def pool_size(args: argparse.Namespace, expect_rps: float) -> int:
    """Single-use bodies for one timed window at ``expect_rps``, with room to spare."""
    return max(args.min_bodies, int(args.duration * expect_rps * 1.6) + 500)


def judge(scenario: Scenario, run: WrkRun | FixedRateRun, ceiling: Ceiling) -> ScenarioResult:
    want = str(scenario.expected_status)
    cap = ceiling.ceiling_rps[scenario.name]
    verdict = Verdict(
        expected_status=scenario.expected_status,
        unexpected=sum(v for k, v in run.statuses.items() if k != want) + sum(run.socket_errors.values()),
        ceiling_rps=cap, ceiling_share=round(run.rate / cap, 2),
    )
    if isinstance(run, WrkRun):
        if run.exhausted_threads:
            verdict.warning = "a wrk thread ran out of pre-generated assertions: raise --min-bodies"
        if run.rps_per_broker_cpu_s:
            verdict.ceiling_share_per_cpu_s = round(run.rps_per_broker_cpu_s / cap, 2)
        if run.broker_cpu_share < 0.8:
            verdict.note = ("the broker used less than 0.8 of a core: it was waiting (on Redis, or for a core shared "
                            "with other processes); see machine.loadavg")
    return ScenarioResult(run, verdict)


def resolve_rate(args: argparse.Namespace, done: dict[str, ScenarioResult]) -> float:
    """The fixed offered rate: ``--rate``, or half the miss rate measured in this run (auto)."""
    if args.rate != "auto":
        return float(args.rate)
    if "miss" in done:
        return max(50.0, round(done["miss"].run.rate / 2 / 50) * 50)
    return 500.0


def spend(broker: BrokerProcess, bodies: list[str]) -> None:
    """Use every assertion once (200), so that sending them again is a replay."""
    for body in bodies:
        status, _, _ = post_token(broker, body)
        if status != 200:
            raise RuntimeError(f"replay setup: first use answered {status}")


def run_scenario(args: argparse.Namespace, scenario: Scenario, broker: BrokerProcess, work: Workload, pin: Pinning,
                 workdir: Path, gen_pin: list[str], threads: int, guess: float,
                 done: dict[str, ScenarioResult]) -> WrkRun | FixedRateRun:
    make = getattr(work, scenario.bodies)
    if scenario.send == "open-loop":
        rate = resolve_rate(args, done)
        bodies = make(max(10, int(rate * args.duration)))
        before = token_latency_buckets(broker)
        window = BrokerWindow(broker.proc.pid)
        run = run_fixed_rate(broker.port, bodies, rate, args.connections, pin)
        window.close()
        run.broker_cpu_share, run.steal = round(window.cpu / window.wall, 2), window.steal
        run.broker_reads_per_request, run.broker_writes_per_request = window.per_request(run.requests)
        if run.requests:
            run.broker_cpu_us_per_request = round(window.cpu / run.requests * 1e6)
        after = token_latency_buckets(broker)
        run.in_broker = in_broker_latency(before["token"], after["token"])
        run.in_broker_redis = in_broker_latency(before["redis"], after["redis"])
        run.generator_alone = generator_alone(bodies, rate, args.connections, pin)
        return run
    bodies = make(scenario.fixed_pool or pool_size(args, guess * scenario.pool_factor))
    if scenario.spend_first:
        spend(broker, bodies)
    counted = bool(broker.management_port)  # the floor and granian rows have no /metrics
    calls = redis_calls(broker) if counted else {}
    run = run_wrk(broker, bodies, scenario.send, duration=args.duration, connections=args.connections,
                  threads=threads, pin_cmd=gen_pin, workdir=workdir, name=scenario.name)
    if counted and run.requests:
        # wrk's count ends with the window; requests still in flight then may add a few calls
        after = redis_calls(broker)
        run.redis_calls_per_request = {op: round((n - calls.get(op, 0)) / run.requests, 3)
                                       for op, n in sorted(after.items()) if n != calls.get(op, 0)}
        if scenario.expected_status == 401:
            run.ratelimit_calls_per_request = run.redis_calls_per_request.get("ratelimit", 0.0)
    return run


def http_scenarios(args: argparse.Namespace, broker: BrokerProcess, work: Workload, pin: Pinning, ceiling: Ceiling,
                   workdir: Path, names: list[str], gen_pin: list[str], label: str = "") -> dict[str, ScenarioResult]:
    threads = 1 if pin.enabled and gen_pin else args.wrk_threads
    out: dict[str, ScenarioResult] = {}
    guess = args.expect_rps  # sizes the pools; raised to the miss rate once measured
    for name in names:
        scenario = BY_NAME[name]
        run = run_scenario(args, scenario, broker, work, pin, workdir, gen_pin, threads, guess, out)
        if name == "miss":
            guess = max(guess, run.rate)
        out[name] = judge(scenario, run, ceiling)
        log(f"{label}{name}: {run.rate} req/s p50 {run.p50_ms} ms p99 {run.p99_ms} ms "
            f"statuses {run.statuses} unexpected {out[name].verdict.unexpected}")
    return out


def warm_up(broker: BrokerProcess, work: Workload) -> None:
    """The client directory prepares each client's keys on first use: do that before timing."""
    for c in work.clients:
        status, _, payload = post_token(broker, form(c.assertion(work.issuer, int(time.time())), c.default_scope))
        if status != 200:
            raise RuntimeError(f"warm-up for {c.client_id}: {status} {payload}")


def detect_cache(broker: BrokerProcess, work: Workload) -> dict[str, Any]:
    """Whether /token answered a repeated client+scope from its token cache (docs/token-cache.md)."""
    client = work.hit_clients[0]
    tokens, headers = [], {}
    for _ in range(2):
        status, headers, payload = post_token(broker, form(client.assertion(work.issuer, int(time.time())), "read"))
        tokens.append(payload.get("access_token") if status == 200 else None)
    same = tokens[0] is not None and tokens[0] == tokens[1]
    return {"detected": same, "how": "two requests for one client+scope returned the same access token" if same else
            "two requests for one client+scope returned different tokens (the token cache did not answer the second)",
            "response_headers": sorted(h for h in headers if "cache" in h or h.startswith("x-"))}


def _redis_cpu(redis: RedisServer) -> float:
    info = redis.command("INFO", "cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def scaling(args: argparse.Namespace, redis: RedisServer, keys_dir: Path, work: Workload, pin: Pinning,
            ceiling: Ceiling, workdir: Path, one_worker: dict[str, ScenarioResult]) -> dict[str, Any]:
    """N workers, nothing pinned (they need both cores), compared with the pinned 1-worker figures."""
    log(f"scaling: starting {args.workers} workers (unpinned)")
    broker = start_broker(keys_dir, workdir / "broker-workers.log", redis_url=redis.url, workers=args.workers,
                          env=broker_settings(args))
    try:
        # The clients are already registered (shared Redis); only the issuer (assertion aud) differs.
        redis_cpu0, t0 = _redis_cpu(redis), time.monotonic()
        res = http_scenarios(args, broker, work.for_issuer(broker.url), pin, ceiling, workdir, ["miss", "hit"], [],
                             label=f"{args.workers} workers ")
        wall = time.monotonic() - t0
        redis_cpu = _redis_cpu(redis) - redis_cpu0
    finally:
        broker.stop()
    out: dict[str, Any] = {"workers": args.workers, "pinning": "none: broker workers, wrk and redis-server share all cores",
                           "scenarios": {k: v.to_json() for k, v in res.items()}, "redis_cpu_share": round(redis_cpu / wall, 2)}
    for name in ("miss", "hit"):
        if name in res and name in one_worker:
            out[f"{name}_speedup"] = round(res[name].run.rate / one_worker[name].run.rate, 2)
    return out


def broker_settings(args: argparse.Namespace) -> dict[str, str]:
    """The headline rows' settings: the deployment defaults unless the flags say otherwise (the
    token cache is always on: it has no switch)."""
    return {"BROKER_LOG_LEVEL": args.log_level, "BROKER_RATELIMIT_MODE": args.ratelimit_mode}


_SHORT = {"BROKER_LOG_LEVEL": "log", "BROKER_RATELIMIT_MODE": "limiter"}


def other_settings_scenarios(args: argparse.Namespace, redis: RedisServer, work: Workload, pin: Pinning,
                             ceiling: Ceiling, workdir: Path, names: list[str],
                             change: dict[str, str]) -> dict[str, dict[str, Any]]:
    """``names`` against a second broker (same pinning, same Redis and clients) whose settings
    differ from the headline's by ``change``; each row carries the settings it ran with."""
    settings = {**broker_settings(args), **change}
    label = ", ".join(f"{_SHORT.get(k, k)} {v}" for k, v in change.items())
    log(f"other settings ({label}): starting a second broker for {', '.join(names)}")
    broker = start_broker(workdir / "keys", workdir / f"broker-{len(change)}-{names[0]}.log", redis_url=redis.url,
                          prefix=pin.broker(), env=settings)
    try:
        there = work.for_issuer(broker.url)
        warm_up(broker, there)
        res = http_scenarios(args, broker, there, pin, ceiling, workdir, names, pin.other(), label=f"[{label}] ")
    finally:
        broker.stop()
    return {name: {**r.to_json(), "settings": settings, "label": label} for name, r in res.items()}


def rss_long_run(args: argparse.Namespace, broker: BrokerProcess, work: Workload, pin: Pinning,
                 workdir: Path) -> dict[str, Any]:
    """Miss requests in batches until ``--rss-requests``, RSS sampled after each batch."""
    samples, done, total_bad = [], 0, 0
    deadline = time.monotonic() + max(300.0, args.rss_requests / 300)  # bounded even on a slow machine
    while done < args.rss_requests and time.monotonic() < deadline:
        # Every body is sent once; a batch ends when its bodies run out (the last few in-flight
        # answers are not counted by wrk then), so progress counts bodies, not 200s.
        bodies = work.miss_bodies(max(1_000, min(40_000, args.rss_requests - done)))
        res = run_wrk(broker, bodies, "once", duration=10.0, connections=args.connections, threads=1,
                      pin_cmd=pin.other(), workdir=workdir, name="rss")
        done += len(bodies)
        total_bad += sum(v for k, v in res.statuses.items() if k != "200")
        samples.append((done, rss_kib(broker.proc.pid)))
        log(f"rss run: {done} requests, RSS {samples[-1][1]} KiB")
    first = samples[1][1] if len(samples) > 1 else samples[0][1]  # after the first batch: warmed up
    last = samples[-1][1]
    return {"requests": done, "non_200": total_bad, "samples": samples, "rss_kib_first_batch": first, "rss_kib_last": last,
            "change_pct_after_warmup": round((last - first) / first * 100, 1)}
