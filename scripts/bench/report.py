"""The printed table, rendered from the same results document that is written as JSON."""

from __future__ import annotations

from typing import Any

from scripts.bench.ceiling import IDLE_GAP_S
from scripts.bench.revisions import rows as revision_rows
from scripts.bench.scenarios import HTTP_SCENARIOS
from scripts.bench.targets import check as check_targets
from scripts.bench.targets import rows as target_rows
from scripts.bench.targets import steal_text


def _header(results: dict[str, Any]) -> list[str]:
    m = results["machine"]
    lines = [
        f"token broker benchmark, {results['date']}",
        f"machine: {m['nproc']} cores ({m['cpu_model']}), Python {m['python']}, {m.get('redis')}",
        f"pinning: {results['pinning']}",
        f"load average at start/end: {m.get('loadavg_at_start')} / {m.get('loadavg_at_end')} (other processes share these cores)",
        *idle_line(m.get("idle")),
        f"token cache on /token: {'yes' if results.get('token_cache', {}).get('detected') else 'no'}",
        "",
    ]
    c = results.get("ceiling")
    if c:
        idle = f" (after {IDLE_GAP_S * 1000:g} ms idle: {c['verify_after_idle_us']})" if c.get("verify_after_idle_us") else ""
        lines.append(f"ceiling (CPU µs/op on the broker core): assertion verify {c['verify_us']}{idle}, token sign {c['sign_us']}, "
                     f"Redis script call (broker's client) {c.get('redis_script_us')} "
                     f"(redis-py pooled SET NX PX GET {c['redis_set_nx_get_us']}), "
                     f"DPoP proof check {c.get('dpop_proof_us', '-')}")
        lines.append("")
    return lines


def idle_line(idle: dict[str, Any] | None) -> list[str]:
    """The header's line on what an idle core does (``system.idle_states``): the fixed-rate row
    depends on it (docs/performance.md, eleventh pass)."""
    if not idle:
        return []
    line = f"idle cores: cpuidle driver {idle['driver']}"
    poll = idle.get("guest_halt_poll_ns")
    if isinstance(poll, int):
        line += (", guest halt polling off (an idle core halts at once)" if poll == 0 else
                 f", guest halt polling up to {poll / 1000:g} µs before a halt")
    return [line]


def _http_rows(scenarios: dict[str, Any], results: dict[str, Any]) -> list[str]:
    headline = results.get("settings", {})
    lines = [
        "req/s and share: wall clock; /cpu-s and share: requests per broker CPU-second (robust to other "
        "processes on the core); ceiling: 1e6 / CPU µs of the unavoidable work",
        f"settings of the rows: log level {headline.get('log_level')}, rate limiter {headline.get('ratelimit_mode')}, "
        "token cache on; rows marked [..] ran on a second broker with the settings named there",
        f"{'scenario':<30}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'ceiling':>9}{'share':>7}{'/cpu-s':>8}{'share':>7}"
        f"{'unexpected':>12}  generator",
    ]
    for name in HTTP_SCENARIOS:
        r = scenarios.get(name)
        if not r:
            continue
        rps = r.get("rps", r.get("achieved_rps"))
        label = name if name != "fixed_rate" else f"fixed {r['offered_rps']:.0f}/s"
        if r.get("label"):
            label = f"{label} [{r['label']}]"
        per_cpu = r.get("rps_per_broker_cpu_s")
        per_cpu_s = f"{per_cpu:>8.0f}{r['ceiling_share_per_cpu_s']:>7.0%}" if per_cpu else f"{'-':>8}{'-':>7}"
        lines.append(f"{label:<30}{rps:>9.0f}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['ceiling_rps']:>9}{r['ceiling_share']:>7.0%}"
                     f"{per_cpu_s}{r['unexpected']:>12}  {r['generator']} (broker cpu {r.get('broker_cpu_share', '-')}, "
                     f"gen cpu {r.get('generator_cpu_share', '-')})")
    return lines


def _dpop_cost(scenarios: dict[str, Any], ceiling: dict[str, Any] | None) -> list[str]:
    """What DPoP adds to a token request: broker CPU per request of dpop minus that of miss (the
    same run, the same broker), beside the proof check measured alone with the broker idle."""
    miss, dpop = scenarios.get("miss") or {}, scenarios.get("dpop") or {}
    if not (miss.get("rps_per_broker_cpu_s") and dpop.get("rps_per_broker_cpu_s")):
        return []
    added = 1e6 / dpop["rps_per_broker_cpu_s"] - 1e6 / miss["rps_per_broker_cpu_s"]
    ratio = dpop["rps_per_broker_cpu_s"] / miss["rps_per_broker_cpu_s"]
    alone = f"; the proof check alone {ceiling['dpop_proof_us']} µs" if ceiling and "dpop_proof_us" in ceiling else ""
    return [f"DPoP cost: {added:+.0f} broker CPU µs per token request (dpop/miss per CPU-second {ratio:.2f}){alone}"]


def _refusal_calls(scenarios: dict[str, Any]) -> list[str]:
    """Failure-counter Redis calls per refused request: the limiter counts a loop pass's refusals in one call."""
    parts = [f"{name} {r['ratelimit_calls_per_request']:.2f}" for name in ("bad_signature", "replay")
             if (r := scenarios.get(name)) and r.get("ratelimit_calls_per_request") is not None]
    return [f"failure-counter Redis calls per refused request: {', '.join(parts)}"] if parts else []


def _syscalls(scenarios: dict[str, Any]) -> list[str]:
    """The broker's read / write system calls per request (a request's own socket read and answer
    write are 1 / 1; the rest is its share of the Redis calls and of the log writes)."""
    parts = []
    for name, r in scenarios.items():
        if isinstance(r, dict) and r.get("broker_writes_per_request") is not None:
            label = f"{name} [{r['label']}]" if r.get("label") else name
            parts.append(f"{label} {r['broker_reads_per_request']:.2f} / {r['broker_writes_per_request']:.2f}")
    return [f"broker read / write system calls per request: {', '.join(parts)}"] if parts else []


def _redis_calls(scenarios: dict[str, Any]) -> list[str]:
    """The broker's Redis calls per request, by ``op`` (a hit makes one ``replay`` call, a cold miss too)."""
    parts = []
    for name, r in scenarios.items():
        if isinstance(r, dict) and r.get("redis_calls_per_request") is not None:
            label = f"{name} [{r['label']}]" if r.get("label") else name
            ops = " + ".join(f"{op} {n:.2f}" for op, n in r["redis_calls_per_request"].items()) or "none"
            parts.append(f"{label} {ops}")
    return [f"broker Redis calls per request: {'; '.join(parts)}"] if parts else []


def _steal_rows(scenarios: dict[str, Any]) -> list[str]:
    """How much of each window the host took away from this VM's cores (noisy neighbours)."""
    parts = [f"{name} {steal_text(r['steal'])}" for name, r in scenarios.items() if isinstance(r, dict) and r.get("steal")]
    return [f"hypervisor steal per window (/proc/stat): {'; '.join(parts)}"] if parts else []


def _fixed_rate_parts(scenarios: dict[str, Any]) -> list[str]:
    """The fixed-rate row's latency, split: the generator against a server that answers at once,
    and the broker's own time per request (its histogram)."""
    r = scenarios.get("fixed_rate") or {}
    lines = []
    if alone := r.get("generator_alone"):
        lines.append(f"fixed {r['offered_rps']:.0f}/s, the generator alone (no-op server on the broker's core, same rate): "
                     f"p50 {alone['p50_ms']} ms, p99 {alone['p99_ms']} ms (broker row: p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms)")
    if late := r.get("generator_start_late"):
        alone_late = (r.get("generator_alone") or {}).get("start_late")
        lines.append(f"fixed {r['offered_rps']:.0f}/s, how late the generator started requests: in the broker's window "
                     f"{_late_text(late)}" + (f"; alone {_late_text(alone_late)}" if alone_late else ""))
    if (inside := r.get("in_broker")) and inside.get("p99_at_most_ms") is not None:
        redis = r.get("in_broker_redis") or {}
        of_which = (f"; its Redis call: p99 <= {redis['p99_at_most_ms']} ms, {redis['share_over_5ms']:.2%} over 5 ms"
                    if redis.get("p99_at_most_ms") is not None else "")
        lines.append(f"fixed {r['offered_rps']:.0f}/s, inside the broker (its /token histogram): p99 <= {inside['p99_at_most_ms']} ms, "
                     f"{inside['share_over_5ms']:.2%} of requests over 5 ms{of_which}")
    if r.get("broker_cpu_share") is not None:
        per = f" ({r['broker_cpu_us_per_request']:.0f} CPU µs per request" if r.get("broker_cpu_us_per_request") else ""
        if per and (miss := (scenarios.get("miss") or {}).get("rps_per_broker_cpu_s")):
            per += f"; the miss row {1e6 / miss:.0f}"
        steal = f"; hypervisor steal {steal_text(r.get('steal'))}" if r.get("steal") else ""
        lines.append(f"fixed {r['offered_rps']:.0f}/s, the window's load: broker busy {r['broker_cpu_share']:.2f} of its core"
                     f"{per + ')' if per else ''}{steal}")
    return lines


def _late_text(late: dict[str, float]) -> str:
    return f"p99 {late['p99_ms']} ms, largest {late['max_ms']} ms, {late['share_over_1ms']:.1%} over 1 ms"


def _floor_share(scenarios: dict[str, Any], floor: dict[str, Any] | None, what: str) -> list[str]:
    """The broker against the floor (the ceiling's work alone behind the same HTTP server), per CPU-second."""
    parts = []
    for name in ("miss", "hit"):
        b, f = (scenarios.get(name) or {}).get("rps_per_broker_cpu_s"), ((floor or {}).get(name) or {}).get("rps_per_broker_cpu_s")
        if b and f:
            parts.append(f"{name} {b / f:.0%} ({what} {f / ((floor or {})[name]['ceiling_rps']):.0%} of the ceiling)")
    return [f"broker / {what} per CPU-second: {', '.join(parts)}"] if parts else []


def _other_rows(scenarios: dict[str, Any]) -> list[str]:
    lines = []
    rs = scenarios.get("rs_verify")
    if rs:
        lines.append(f"{'rs_verify':<16}{rs['tokens_per_s']:>9} tokens/s per CPU-second ({rs['us_per_token']} µs each, "
                     f"in-process; {rs['tokens_per_s_wall']}/s wall)")
    rc = scenarios.get("redis_clients")
    if rc:
        lines.append(f"redis clients on the token endpoint's script call ({rc['callers']} callers, client CPU µs per call): "
                     + ", ".join(f"{name} {c['cpu_us']}" for name, c in rc["candidates"].items()))
    rm = scenarios.get("redis_memory")
    if rm:
        lines.append(f"redis memory per recorded jti: {rm['bytes_per_jti']} bytes ({rm['keys']} keys)")
    mem = scenarios.get("memory")
    if mem:
        lines.append(f"broker RSS: {mem['rss_kib_before']} KiB -> {mem['rss_kib_after']} KiB ({mem['change_pct']}%) "
                     f"over {mem['requests_between']} requests")
        if "long_run" in mem:
            lr = mem["long_run"]
            lines.append(f"long RSS run: {lr['requests']} requests, {lr['rss_kib_first_batch']} -> {lr['rss_kib_last']} KiB "
                         f"({lr['change_pct_after_warmup']}% after warm-up)")
    return lines


def _worker_rows(w: dict[str, Any] | None) -> list[str]:
    lines: list[str] = []
    for name in ("miss", "hit") if w else ():
        r = w["scenarios"].get(name)
        if r:
            lines.append(f"{w['workers']} workers {name}: {r['rps']:.0f} req/s (x{w.get(name + '_speedup')} vs 1 pinned worker), "
                         f"p99 {r['p99_ms']} ms; broker cpu {r['broker_cpu_share']}, wrk cpu {r['generator_cpu_share']}, "
                         f"redis cpu {w['redis_cpu_share']} (cores)")
    return lines


def _profile_rows(profiles: dict[str, Any]) -> list[str]:
    lines = []
    for name, prof in profiles.items():
        if not isinstance(prof, dict) or "inclusive_pct" not in prof:
            continue
        lines.append("")
        lines.append(f"profile of {name} ({prof['samples']} samples, {prof['rps_while_profiled']} req/s while profiled):")
        for label, v in prof["inclusive_pct"].items():
            lines.append(f"  {v:>5.1f}%  {label}")
        lines.append("  exclusive (leaf-up attribution, sums to 100%):")
        for label, v in prof.get("exclusive_pct", {}).items():
            lines.append(f"  {v:>5.1f}%  {label}")
    return lines


def table(results: dict[str, Any]) -> str:
    scenarios = results["scenarios"]
    return "\n".join([*_header(results), *_http_rows(scenarios, results), *_http_rows(results.get("other_settings") or {}, results)[3:],
                      *_http_rows(results.get("http_servers") or {}, results)[3:],
                      *_http_rows(results.get("floor") or {}, results)[3:],
                      *_http_rows(results.get("floor_raw") or {}, results)[3:],
                      *_floor_share(scenarios, results.get("floor"), "floor"),
                      *_floor_share(scenarios, results.get("floor_raw"), "raw floor"),
                      *_dpop_cost(scenarios, results.get("ceiling")), *_refusal_calls(scenarios), *_redis_calls(scenarios), *_syscalls(scenarios),
                      *_fixed_rate_parts(scenarios), *_steal_rows(scenarios), *revision_rows(results.get("revisions")),
                      *_other_rows(scenarios),
                      *_worker_rows(results.get("workers")), *_profile_rows(results.get("profile") or {}),
                      *target_rows(results.get("targets") or check_targets(results))])
