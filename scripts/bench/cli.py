"""``.venv/bin/python scripts/bench.py [flags]``: the flags, and one run from start to finish."""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import Any

import scripts.bench
from scripts.bench.ceiling import IDLE_GAP_S, measure_ceiling, measure_redis_memory
from scripts.bench.profile import profile_runs, summarize_profile
from scripts.bench.redis_clients import measure_redis_clients
from scripts.bench.report import table
from scripts.bench.results import Ceiling
from scripts.bench.revisions import compare_revisions
from scripts.bench.runner import (
    broker_settings,
    detect_cache,
    http_scenarios,
    other_settings_scenarios,
    rss_long_run,
    scaling,
    warm_up,
)
from scripts.bench.scenarios import ALL_SCENARIOS, HTTP_SCENARIOS, REJECTION_SCENARIOS
from scripts.bench.servers import floor_scenarios, granian_scenarios
from scripts.bench.system import Pinning, loadavg, log, machine, rss_kib
from scripts.bench.targets import check as check_targets
from scripts.bench.workload import Workload
from scripts.processes import ROOT, BrokerProcess, RedisServer, register_clients, start_broker


def _servers(value: str) -> list[str]:
    names = frozenset(v for v in value.split(",") if v and v != "none")
    if names - {"granian", "floor"}:
        raise argparse.ArgumentTypeError(f"unknown server(s): {', '.join(sorted(names - {'granian', 'floor'}))}")
    return sorted(names)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=(scripts.bench.__doc__ or "").split("\n\n")[0])
    p.add_argument("--duration", type=float, default=8.0, help="seconds per timed scenario (default 8, max 10 advised)")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--rate", default="auto",
                   help="offered req/s for the fixed-rate scenario (miss requests); auto = half the miss req/s measured "
                        "in this run (so the figure is latency below saturation on a noisy machine)")
    p.add_argument("--scenarios", default=",".join(ALL_SCENARIOS), help=f"comma list of {','.join(ALL_SCENARIOS)}")
    p.add_argument("--workers", type=int, default=1, help="2: also run miss/hit with 2 workers unpinned and report scaling")
    p.add_argument("--rss-requests", type=int, default=0, help="also run this many miss requests watching broker RSS (e.g. 1000000)")
    p.add_argument("--redis-jtis", type=int, default=100_000, help="keys written for the Redis memory-per-jti figure")
    p.add_argument("--ceiling-n", type=int, default=2000, help="operations per ceiling round")
    p.add_argument("--expect-rps", type=float, default=4000.0, help="sizes the pre-generated assertion pools")
    p.add_argument("--min-bodies", type=int, default=2000)
    p.add_argument("--wrk-threads", type=int, default=2, help="wrk threads when not pinned")
    p.add_argument("--log-level", default="info",
                   help="BROKER_LOG_LEVEL for the headline rows (default info, what a deployment runs: one audit line "
                        "per token)")
    p.add_argument("--compare-log-level", default="warning",
                   help="also run miss and hit on a broker at this log level, in labelled rows, so the audit log's cost "
                        "shows (default warning; 'none' skips it)")
    p.add_argument("--compare-server", default="none", type=_servers,
                   help="comma list: also run miss and hit, in labelled rows, with the broker app under granian "
                        "(measurement only, pip install granian==2.8.7) and/or against 'floor' (scripts/bench/floor.py: "
                        "the ceiling's work alone as a bare ASGI app under uvicorn)")
    p.add_argument("--compare-rev", default="", metavar="REV[,REV...]",
                   help="also run miss and hit on the broker of another git revision (e.g. the commit before a "
                        "change), alternated with this checkout's for --compare-rounds rounds; prints the ratio of "
                        "the medians (scripts/bench/revisions.py)")
    p.add_argument("--compare-rounds", type=int, default=3, help="alternated rounds for --compare-rev (default 3)")
    p.add_argument("--ratelimit-mode", default="enforce", choices=("observe", "enforce", "off"),
                   help="BROKER_RATELIMIT_MODE for the headline rows (default enforce, the deployment default). With "
                        "enforce the rejection scenarios run on a second broker in observe mode (labelled): enforce "
                        "would answer one source address's flood with cheap 429s after 20 failures")
    p.add_argument("--no-pin", action="store_true")
    p.add_argument("--profile", metavar="SECONDS", type=float, default=0.0,
                   help="py-spy the broker during an extra run of this length per --profile-scenarios; "
                        "writes bench-results/profile-<scenario>.txt (collapsed stacks) and .json (summary)")
    p.add_argument("--profile-scenarios", default="miss",
                   help="comma list of miss, hit, bad_signature, replay (profile the refusals with "
                        "--ratelimit-mode observe: enforce answers one address's flood with 429s)")
    p.add_argument("--summarize", metavar="RAW", help="only print the summary of a saved py-spy raw profile and exit")
    p.add_argument("--smoke", action="store_true", help="seconds-long run for CI: tiny pools, 1 s per scenario")
    p.add_argument("--out", default=str(ROOT / "bench-results" / "latest.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.summarize:
        print(json.dumps(summarize_profile(Path(args.summarize)), indent=2))
        return 0
    if args.smoke:
        args.duration, args.connections, args.rate = 1.0, 8, "200"
        # Pools sized for up to ~12k req/s so a fast CI runner does not run out within the second.
        args.redis_jtis, args.ceiling_n, args.expect_rps, args.min_bodies = 2000, 200, 8000.0, 500
    names = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = set(names) - set(ALL_SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    for tool in ("redis-server", "wrk"):
        if shutil.which(tool) is None:
            print(f"bench: {tool} is not installed (apt-get install redis-server wrk)", file=sys.stderr)
            return 2
    # SIGTERM (timeout, CI cancel) unwinds through run()'s finally, which stops Redis and the broker.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = run(args, names)
    results["machine"]["loadavg_at_end"] = loadavg()
    return report(results, Path(args.out))


def run(args: argparse.Namespace, names: list[str]) -> dict[str, Any]:
    pin = Pinning(not args.no_pin)
    log(f"pinning: {pin.describe()}")
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "pinning": pin.describe(),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out",)},
        "scenarios": {},
    }
    workdir = Path(tempfile.mkdtemp(prefix="broker-bench-"))
    keys_dir = workdir / "keys"
    redis = RedisServer(workdir=workdir, logfile=workdir / "redis.log", prefix=pin.other())
    broker: BrokerProcess | None = None
    try:
        redis.start()
        broker = start_broker(keys_dir, workdir / "broker.log", redis_url=redis.url, prefix=pin.broker(),
                              env=broker_settings(args))
        work = Workload(broker.url)
        register_clients(broker.url, keys_dir / "admin.jwk", [c.metadata() for c in work.clients])
        warm_up(broker, work)
        results["token_cache"] = detect_cache(broker, work)
        log(f"token cache: {results['token_cache']['how']}")
        log("ceiling: measuring on the broker's core (broker idle)")
        ceiling = measure_ceiling(work, redis.url, pin, args.ceiling_n, 3 if args.smoke else 5)
        results["ceiling"] = ceiling.to_json()
        log(f"ceiling: verify {ceiling.verify_us} µs ({ceiling.verify_after_idle_us} µs after {IDLE_GAP_S * 1000:g} ms idle), sign {ceiling.sign_us} µs, redis script {ceiling.redis_script_us} µs, "
            f"DPoP proof check {ceiling.dpop_proof_us} µs")
        measure(args, names, results, redis, broker, work, pin, ceiling, workdir)
    finally:
        if broker is not None:
            broker.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return results


def measure(args: argparse.Namespace, names: list[str], results: dict[str, Any], redis: RedisServer,
            broker: BrokerProcess, work: Workload, pin: Pinning, ceiling: Ceiling, workdir: Path) -> None:
    """The scenarios, in order: HTTP load, then the in-process and memory figures, profiles, workers."""
    scenarios = results["scenarios"]
    rss_before = rss_kib(broker.proc.pid)
    # Rejections under enforce would turn into 429s after 20 failures from 127.0.0.1: they run on
    # a broker in observe mode instead (labelled), every other row at the headline settings.
    apart = REJECTION_SCENARIOS if args.ratelimit_mode == "enforce" else ()
    headline = [n for n in names if n in HTTP_SCENARIOS and n not in apart]
    http = http_scenarios(args, broker, work, pin, ceiling, workdir, headline, pin.other())
    scenarios.update({name: {**r.to_json(), "settings": broker_settings(args)} for name, r in http.items()})
    rss_after = rss_kib(broker.proc.pid)
    rejections = [n for n in names if n in apart]
    if rejections:
        observe = {"BROKER_RATELIMIT_MODE": "observe"}
        scenarios.update(other_settings_scenarios(args, redis, work, pin, ceiling, workdir, rejections, observe))
    compared = [n for n in ("miss", "hit") if n in names]
    if compared and args.compare_log_level not in ("", "none", args.log_level):
        quieter = {"BROKER_LOG_LEVEL": args.compare_log_level}
        results["other_settings"] = other_settings_scenarios(args, redis, work, pin, ceiling, workdir, compared, quieter)
    if "rs_verify" in names:
        scenarios["rs_verify"] = {
            "tokens_per_s": ceiling.ceiling_rps["rs_verify"], "us_per_token": ceiling.rs_verify_us,
            "tokens_per_s_wall": round(1e6 / ceiling.wall_us["rs_verify"]),
            "how": "app.oauth.access_token.verify_access_token in a tight loop on the broker core (ES256); "
                   "tokens_per_s from CPU time, tokens_per_s_wall from wall time",
        }
    if "granian" in args.compare_server:
        results["http_servers"] = granian_scenarios(args, redis, work, pin, ceiling, workdir,
                                                    [n for n in ("miss", "hit") if n in names])
    if "floor" in args.compare_server:
        results["floor"] = floor_scenarios(args, redis, work, pin, ceiling, workdir,
                                           [n for n in ("miss", "hit") if n in names])
        results["floor_raw"] = floor_scenarios(args, redis, work, pin, ceiling, workdir,
                                               [n for n in ("miss", "hit") if n in names], raw=True)
    revs = [r for r in args.compare_rev.split(",") if r.strip()]
    if revs:
        results["revisions"] = compare_revisions(args, redis, work, pin, ceiling, workdir, revs)
    if "redis_clients" in names:
        scenarios["redis_clients"] = measure_redis_clients(redis.url, pin, args.ceiling_n * 2, 3 if args.smoke else 5,
                                                           1 if args.smoke else 3)
    if "redis_memory" in names:
        scenarios["redis_memory"] = measure_redis_memory(redis, args.redis_jtis).to_json()
        log(f"redis memory per jti: {scenarios['redis_memory']['bytes_per_jti']} bytes")
    if "memory" in names:
        mem = {"rss_kib_before": rss_before, "rss_kib_after": rss_after,
               "change_pct": round((rss_after - rss_before) / rss_before * 100, 1) if rss_before else None,
               "requests_between": sum(r.run.requests for r in http.values())}
        if args.rss_requests:
            mem["long_run"] = rss_long_run(args, broker, work, pin, workdir)
        scenarios["memory"] = mem
        log(f"broker RSS: {rss_before} KiB -> {rss_after} KiB")
    if args.profile:
        results["profile"] = profile_runs(args, broker, work, pin, workdir)
    if args.workers > 1:
        results["workers"] = scaling(args, redis, workdir / "keys", work, pin, ceiling, workdir, http)


def report(results: dict[str, Any], out: Path) -> int:
    """Write the JSON, print the table; exit status 1 if any scenario saw an unexpected response."""
    out.parent.mkdir(parents=True, exist_ok=True)
    results["targets"] = check_targets(results)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nJSON: {out}")
    bad = [n for n, r in results["scenarios"].items() if r.get("unexpected")]
    if bad:
        print(f"bench: unexpected responses in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0
