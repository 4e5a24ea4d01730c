"""Redis clients side by side on the token endpoint's exact call: the ``EVALSHA`` of
``app.store.token_cache._CONSUME_AND_LOOKUP`` (3 keys: replay record, cache entry, mint lock),
32 concurrent callers, client CPU µs per call on the broker's core with the broker idle.

Candidates:

- ``redis-py pooled``: ``RedisTokenStore.consume_and_lookup`` over ``app.store.redis.connect`` with
  its script calls on redis-py's pool, as before the auto-pipeline: ``RedisStore._run``'s deadline
  plus redis-py's own ``socket_timeout`` (an ``asyncio.wait_for`` task around each write and an
  ``asyncio.timeout`` around each read), a pooled connection per call;
- ``redis-py pooled, one timeout``: the same over a client with ``socket_timeout=None`` (only
  ``_run``'s deadline);
- ``auto-pipelined``: the same store over ``app.store.redis.connect`` as the broker uses it
  (``app.store.autopipeline``: one redis-py connection shared by every caller, the commands issued
  in one event-loop turn written at once, one reader task handing the replies out in order);
- ``coredis``: ``Script.__call__`` under the same ``asyncio.timeout`` (skipped when coredis is
  not installed: ``pip install coredis==6.9.0``);
- ``valkey-glide``: ``GlideClient.invoke_script`` (``EVALSHA``, ``SCRIPT LOAD`` and a retry on
  ``NOSCRIPT``) under the same ``asyncio.timeout``, its own 250 ms ``request_timeout`` set too (skipped
  when valkey-glide is not installed: ``pip install valkey-glide==2.6.0``). Its client work runs partly
  in Rust (tokio) threads in this process; process CPU time counts them.

The extra clients are for this measurement only, not dependencies of the broker.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

from scripts.bench.system import Pinning, log, run_async

CALLERS = 32


async def _per_call_us(call: Callable[[int], Awaitable[Any]], n: int, rounds: int) -> tuple[float, float]:
    """Median over rounds of (wall, CPU) µs per call, ``CALLERS`` callers sharing ``n`` calls."""
    await asyncio.gather(*(call(i) for i in range(CALLERS * 2)))  # connect, load the script
    wall, cpu = [], []
    for r in range(rounds):
        base = (r + 1) * n

        async def caller(start: int, base: int = base) -> None:
            for i in range(start, n, CALLERS):
                await call(base + i)

        c0, t0 = time.process_time(), time.perf_counter()
        await asyncio.gather(*(caller(k) for k in range(CALLERS)))
        wall.append((time.perf_counter() - t0) / n * 1e6)
        cpu.append((time.process_time() - c0) / n * 1e6)
    return round(statistics.median(wall), 1), round(statistics.median(cpu), 1)


async def store_call_us(redis: Any, n: int, rounds: int) -> tuple[float, float]:
    """(wall, CPU) µs per ``RedisTokenStore.consume_and_lookup`` (the broker's call, ``_run``
    included) over ``redis``, ``CALLERS`` at a time; closes ``redis``."""
    from app.metrics import Metrics
    from app.store.token_cache import RedisTokenStore

    store = RedisTokenStore(redis, timeout=0.25, retries=1, metrics=Metrics())
    run = secrets.token_hex(4)
    rid = os.urandom(12).hex()

    async def call(i: int) -> None:
        lookup = await store.consume_and_lookup(f"bench-{i % 24}", f"{run}-{i}", rid, 60_000, f"{run}{i}")
        assert lookup.first_use

    try:
        return await _per_call_us(call, n, rounds)
    finally:
        await redis.aclose()


async def _coredis_candidate(url: str, n: int, rounds: int) -> tuple[float, float]:
    import coredis

    from app.store import keyspace
    from app.store.token_cache import _CONSUME_AND_LOOKUP

    client = coredis.Redis.from_url(url)
    run = secrets.token_hex(4)
    rid = os.urandom(12).hex()
    async with client:
        script = client.register_script(_CONSUME_AND_LOOKUP)

        async def call(i: int) -> None:
            cid, jti, cache_id = f"bench-{i % 24}", f"{run}-{i}", f"{run}{i}"
            names = [keyspace.replay(cid, jti), keyspace.token_entry(cid, cache_id), keyspace.token_lock(cid, cache_id)]
            async with asyncio.timeout(0.55):
                reply = await script(keys=names, args=[rid, 60_000, 2000])
            assert reply[0] == 1

        return await _per_call_us(call, n, rounds)


async def _glide_candidate(url: str, n: int, rounds: int) -> tuple[float, float]:
    """valkey-glide's asyncio client (one multiplexed connection, the protocol work in its Rust
    core). That core runs on tokio threads inside this process and hands replies back through a
    pipe the event loop reads: ``time.process_time`` counts every thread of the process, so the
    Rust threads' CPU is in the figure, as it would be on the broker's core. The client starts
    those threads when it is created, inside ``measure_redis_clients``'s ``pin.run_on``, so they
    inherit the broker core's affinity."""
    from urllib.parse import urlsplit

    from glide import GlideClient, GlideClientConfiguration, NodeAddress, Script

    from app.store import keyspace
    from app.store.token_cache import _CONSUME_AND_LOOKUP

    where = urlsplit(url)
    config = GlideClientConfiguration([NodeAddress(where.hostname or "127.0.0.1", where.port or 6379)],
                                      database_id=int(where.path.lstrip("/") or 0), request_timeout=250)
    client = await GlideClient.create(config)
    script = Script(_CONSUME_AND_LOOKUP)
    run = secrets.token_hex(4)
    rid = os.urandom(12).hex()
    try:
        async def call(i: int) -> None:
            cid, jti, cache_id = f"bench-{i % 24}", f"{run}-{i}", f"{run}{i}"
            names = [keyspace.replay(cid, jti), keyspace.token_entry(cid, cache_id), keyspace.token_lock(cid, cache_id)]
            async with asyncio.timeout(0.55):
                reply: Any = await client.invoke_script(script, keys=names, args=[rid, "60000", "2000"])
            assert reply[0] == 1

        return await _per_call_us(call, n, rounds)
    finally:
        await client.close()


def _candidates(url: str) -> dict[str, Callable[[int, int], Awaitable[tuple[float, float]]]]:
    from app.store.redis import connect

    def pooled() -> Any:
        client = connect(url, timeout=0.25, retries=1)
        client.scripts = None  # register_script: redis-py's own Script, one pooled connection per call
        return client

    out: dict[str, Callable[[int, int], Awaitable[tuple[float, float]]]] = {
        "redis-py pooled": lambda n, r: store_call_us(pooled(), n, r),
        "redis-py pooled, one timeout": lambda n, r: store_call_us(_one_timeout(url), n, r),
        "auto-pipelined": lambda n, r: store_call_us(connect(url, timeout=0.25, retries=1), n, r),
    }
    try:
        import coredis  # noqa: F401
    except ImportError:
        log("redis clients: coredis not installed, skipped")
    else:
        out["coredis"] = lambda n, r: _coredis_candidate(url, n, r)
    try:
        import glide  # noqa: F401
    except ImportError:
        log("redis clients: valkey-glide not installed, skipped")
    else:
        out["valkey-glide"] = lambda n, r: _glide_candidate(url, n, r)
    return out


def _one_timeout(url: str) -> Any:
    from redis.asyncio import Redis
    from redis.asyncio.retry import Retry
    from redis.backoff import NoBackoff

    return Redis.from_url(url, socket_timeout=None, socket_connect_timeout=0.25, retry=Retry(NoBackoff(), 1),
                          health_check_interval=0, max_connections=256)


def measure_redis_clients(url: str, pin: Pinning, n: int, rounds: int, alternations: int = 3) -> dict[str, Any]:
    """Each candidate ``alternations`` times, interleaved (A B C D A B C D ...), median of those."""
    candidates = _candidates(url)
    runs: dict[str, list[tuple[float, float]]] = {name: [] for name in candidates}
    with pin.run_on(pin.broker_core):
        for _ in range(alternations):
            for name, measure in candidates.items():
                runs[name].append(run_async(measure(n, rounds)))
    out: dict[str, Any] = {"call": "EVALSHA of app.store.token_cache._CONSUME_AND_LOOKUP, 3 keys, first use + miss",
                           "callers": CALLERS, "calls_per_round": n, "how": (
                               f"client CPU µs per call (process CPU time) on the broker core with the broker idle, "
                               f"median of {rounds} rounds, each candidate run {alternations} times interleaved; the "
                               "median of those"), "candidates": {}}
    for name, pairs in runs.items():
        out["candidates"][name] = {"cpu_us": statistics.median(c for _, c in pairs),
                                   "wall_us": statistics.median(w for w, _ in pairs),
                                   "cpu_us_runs": [c for _, c in pairs]}
        log(f"redis clients: {name}: {out['candidates'][name]['cpu_us']} CPU µs/call")
    return out
