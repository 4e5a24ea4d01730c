"""Kill Redis in the middle of a load run (attack matrix: `redis-unreachable`).

A bounded load of single-use assertions runs against two broker processes; Redis is killed
(SIGKILL) part-way and restarted a moment later. Every request that runs entirely inside the
outage gets 503 ``temporarily_unavailable`` with ``Retry-After``; nothing else but 200 or 503
ever comes back (no 500, no 401 on a first use); every token issued after the restart has its jti
recorded (its replay is refused); and service resumes without restarting the brokers.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import Settings
from tests.conftest import Broker, FrozenClock, RedisServer
from tests.helpers import ISS, TestClient, form

pytestmark = [pytest.mark.redis, pytest.mark.live]

CONCURRENCY = 8
MAX_REQUESTS = 2500
UNAVAILABLE = {"error": "temporarily_unavailable", "error_description": "The service is temporarily unavailable; retry later."}


def test_kill_redis_during_load(real_redis: RedisServer, spawn_broker: Any, tmp_path: Path) -> None:
    brokers = [spawn_broker(redis_url=real_redis.url) for _ in range(2)]
    c1 = TestClient("c1")
    with Broker(Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=real_redis.url), FrozenClock(time.time())) as admin:
        admin.register(c1)
    real_redis.command("SAVE")  # the registry survives the kill (the server runs without persistence)
    # c1 is new to both replicas: each reads it from the registry on first use (nothing to wait for).
    now = time.time()
    assertions = [c1.assertion(now) for _ in range(MAX_REQUESTS)]  # generated before the timed run

    # (assertion index, start, end, status, body, retry-after)
    results: list[tuple[int, float, float, int, Any, str | None]] = []
    outage: dict[str, float] = {}

    async def load() -> None:
        queue = list(range(MAX_REQUESTS))
        stop_at = time.monotonic() + 8.0
        async with httpx.AsyncClient(timeout=10) as http:
            async def worker(w: int) -> None:
                while queue and time.monotonic() < stop_at and not ("up" in outage and time.monotonic() > outage["up"] + 1.5):
                    i = queue.pop(0)
                    t0 = time.monotonic()
                    resp = await http.post(brokers[i % 2].url + "/token", data=form(assertions[i]))
                    results.append((i, t0, time.monotonic(), resp.status_code, resp.json(), resp.headers.get("retry-after")))
                    if resp.status_code == 503:
                        # 503s come back fast: pace them so the pool of assertions outlasts the
                        # outage and some are left to show the recovery.
                        await asyncio.sleep(0.05)

            async def chaos() -> None:
                await asyncio.sleep(0.7)
                assert real_redis.proc is not None
                real_redis.proc.kill()
                await asyncio.to_thread(real_redis.proc.wait)
                real_redis.proc = None
                outage["down"] = time.monotonic()
                await asyncio.sleep(1.5)
                outage["restart"] = time.monotonic()
                await asyncio.to_thread(real_redis.start)
                outage["up"] = time.monotonic()

            await asyncio.gather(chaos(), *(worker(w) for w in range(CONCURRENCY)))

    try:
        asyncio.run(load())
    finally:
        if real_redis.proc is None:
            real_redis.start()
        (Path(real_redis.dir) / "dump.rdb").unlink(missing_ok=True)

    statuses = Counter(r[3] for r in results)
    assert set(statuses) <= {200, 503}, statuses
    during = [r for r in results if r[1] >= outage["down"] and r[2] <= outage["restart"]]
    assert len(during) >= 10, "the load did not reach the outage"
    assert all(r[3] == 503 and r[4] == UNAVAILABLE and r[5] == "2" for r in during), Counter(r[3] for r in during)
    assert all(r[3] == 503 and r[4] == UNAVAILABLE for r in results if r[3] != 200)
    before = [r for r in results if r[2] < outage["down"] - 0.5]
    after = sorted((r for r in results if r[1] > outage["up"]), key=lambda r: r[1])
    assert before and all(r[3] == 200 for r in before)
    assert after and after[-1][3] == 200, "service did not resume"
    assert all(r[3] == 200 for r in after if r[1] > outage["up"] + 1.0)  # resumed within a second

    # No token without the replay check: every assertion that got a token after the restart is
    # recorded in the new Redis, so sending it again is refused.
    issued_after = [r[0] for r in after if r[3] == 200][:30]
    with httpx.Client(timeout=10) as http:
        for i in issued_after:
            again = http.post(brokers[(i + 1) % 2].url + "/token", data=form(assertions[i]))
            assert again.status_code in (401, 429), again.text
    print(f"load run: {dict(statuses)}; {len(during)} requests entirely inside the outage, all 503")
