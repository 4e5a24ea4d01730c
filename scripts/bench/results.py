"""Typed results. ``to_json`` gives the dicts written to ``bench-results/latest.json`` (the keys
and their order are the JSON's; docs/performance.md quotes them)."""

from __future__ import annotations

from typing import Any

import msgspec


class WrkRun(msgspec.Struct, kw_only=True):
    """One timed window driven by wrk (closed loop)."""

    rps: float
    requests: int
    seconds: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    exhausted_threads: int
    broker_cpu_share: float  # 1.0 = one core fully busy
    # Requests per broker CPU-second: what one core would serve if the broker had it to itself
    # (meaningful when the broker is CPU-bound; on a shared machine the wall figure is lower).
    rps_per_broker_cpu_s: float | None
    generator_cpu_share: float
    connections: int
    generator: str
    #: Refusal scenarios: the broker's failure-counter Redis calls per request in the window
    #: (``broker_redis_duration_seconds_count{op="ratelimit"}``); 1.0 = one call per refusal.
    ratelimit_calls_per_request: float | None = None
    #: The broker's read and write system calls per request in the window (``/proc/<pid>/io``:
    #: the request's socket read and answer write, its share of the Redis reads and writes, the log
    #: writes; the counts include the rare /metrics and start-up work of the window).
    broker_reads_per_request: float | None = None
    broker_writes_per_request: float | None = None
    #: The broker's Redis calls per request in the window by ``op``
    #: (``broker_redis_duration_seconds_count``): ``replay`` is the token endpoint's script,
    #: ``token_cache`` the cache write, lock and reads, ``ratelimit`` the failure counter.
    redis_calls_per_request: dict[str, float] | None = None
    #: Per core, the share of the window the hypervisor took away (``/proc/stat`` steal): the
    #: broker, Redis or the generator had work and the host ran something else. None off Linux.
    steal: dict[str, float] | None = None

    @property
    def rate(self) -> float:
        return self.rps


class FixedRateRun(msgspec.Struct, kw_only=True):
    """One open-loop window: requests due at a fixed rate, latency counted from when each was due."""

    offered_rps: float
    achieved_rps: float
    requests: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    statuses: dict[str, int]
    socket_errors: dict[str, int]
    connections: int
    generator: str
    #: The broker's own time per request in the window (its ``/token`` latency histogram):
    #: ``p99_at_most_ms`` (a bucket bound) and ``share_over_5ms``.
    in_broker: dict[str, Any] | None = None
    #: The same figures for the token endpoint's Redis call (``broker_redis_duration_seconds``,
    #: ``op="replay"``): how much of the broker's tail is spent waiting for Redis.
    in_broker_redis: dict[str, Any] | None = None
    #: The same generator, rate and pinning against a server that answers at once
    #: (``scripts/bench/noop.py``): what the generator itself adds.
    generator_alone: dict[str, Any] | None = None
    #: How late the generator itself started the requests of this window (``load.start_lateness``):
    #: ``p99_ms``, ``max_ms``, ``share_over_1ms``. Bursts it sent are its own, not the broker's.
    generator_start_late: dict[str, float] | None = None
    #: The broker's CPU time over the window's wall time (1.0 = its core fully busy): how loaded
    #: "half the miss rate" left it in this window.
    broker_cpu_share: float | None = None
    #: The broker's CPU time and read / write system calls per request in the window (as the
    #: closed-loop rows' figures: at a fixed rate fewer requests share each loop pass).
    broker_cpu_us_per_request: float | None = None
    broker_reads_per_request: float | None = None
    broker_writes_per_request: float | None = None
    #: As ``WrkRun.steal``.
    steal: dict[str, float] | None = None

    @property
    def rate(self) -> float:
        return self.achieved_rps


class Verdict(msgspec.Struct, kw_only=True, omit_defaults=True):
    """What a run means: responses other than the expected status, and the share of the ceiling."""

    warning: str | None = None
    expected_status: int
    unexpected: int
    ceiling_rps: int
    ceiling_share: float
    ceiling_share_per_cpu_s: float | None = None
    note: str | None = None


class ScenarioResult(msgspec.Struct):
    run: WrkRun | FixedRateRun
    verdict: Verdict

    def to_json(self) -> dict[str, Any]:
        return {**msgspec.to_builtins(self.run), **msgspec.to_builtins(self.verdict)}


class Ceiling(msgspec.Struct, kw_only=True):
    verify_us: float
    sign_us: float
    redis_script_us: float
    redis_set_nx_get_us: float
    rs_verify_us: float
    #: The broker's DPoP proof check per token request (``app.oauth.dpop.verify_token_proof``).
    dpop_proof_us: float
    wall_us: dict[str, float]
    ceiling_rps: dict[str, int]
    note: str
    #: The same verify, each after 1 ms of idle core (``ceiling._verify_after_idle``): not a
    #: ceiling, the price of work that comes spaced out, as at a fixed rate's load.
    verify_after_idle_us: float | None = None

    def to_json(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)


class RedisMemory(msgspec.Struct, kw_only=True):
    keys: int
    used_memory_before: int
    used_memory_after: int
    bytes_per_jti: float
    key_example_length: int
    value_length: int
    ttl: str

    def to_json(self) -> dict[str, Any]:
        return msgspec.to_builtins(self)
