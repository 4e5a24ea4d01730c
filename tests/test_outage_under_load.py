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

    async def until(condition: Any, limit: float) -> None:
        """Wait for something the load has done (never a fixed pause); give up after ``limit`` s."""
        deadline = time.monotonic() + limit
        while not condition() and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    def recovered() -> bool:
        """Both replicas have issued tokens since the restart: the load may stop."""
        if "up" not in outage:
            return False
        ok = {r[0] % 2 for r in results if r[1] > outage["up"] and r[3] == 200}
        return ok == {0, 1} and sum(1 for r in results if r[1] > outage["up"] and r[3] == 200) >= 20

    async def load() -> None:
        queue = list(range(MAX_REQUESTS))
        stop_at = time.monotonic() + 60.0  # a bound, not an expectation: the conditions end it first
        async with httpx.AsyncClient(timeout=10) as http:
            async def worker(w: int) -> None:
                while queue and time.monotonic() < stop_at and not recovered():
                    i = queue.pop(0)
                    t0 = time.monotonic()
                    resp = await http.post(brokers[i % 2].url + "/token", data=form(assertions[i]))
                    results.append((i, t0, time.monotonic(), resp.status_code, resp.json(), resp.headers.get("retry-after")))
                    if resp.status_code == 503:
                        # 503s come back fast: pace them so the pool of assertions outlasts the
                        # outage and some are left to show the recovery.
                        await asyncio.sleep(0.05)

            async def chaos() -> None:
                await until(lambda: sum(1 for r in results if r[3] == 200) >= 20, 30)  # the load is running
                assert real_redis.proc is not None
                outage["kill"] = time.monotonic()
                real_redis.proc.kill()
                await asyncio.to_thread(real_redis.proc.wait)
                real_redis.proc = None
                outage["down"] = time.monotonic()
                # Down until requests have run entirely inside the outage (however slow the machine).
                await until(lambda: sum(1 for r in results if r[1] >= outage["down"]) >= 20, 30)
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
    before = [r for r in results if r[2] < outage["kill"]]  # answered before the kill: Redis was there
    after = sorted((r for r in results if r[1] > outage["up"]), key=lambda r: r[1])
    assert before and all(r[3] == 200 for r in before)
    assert after and after[-1][3] == 200, "service did not resume"
    # Once a replica has issued a token after the restart, it keeps issuing them (no relapse).
    for replica in (0, 1):
        mine = [r for r in after if r[0] % 2 == replica]
        first_ok = next(r[1] for r in mine if r[3] == 200)
        assert all(r[3] == 200 for r in mine if r[1] > first_ok), Counter(r[3] for r in mine if r[1] > first_ok)

    # No token without the replay check: every assertion that got a token after the restart is
    # recorded in the new Redis, so sending it again is refused.
    issued_after = [r[0] for r in after if r[3] == 200][:30]
    with httpx.Client(timeout=10) as http:
        for i in issued_after:
            again = http.post(brokers[(i + 1) % 2].url + "/token", data=form(assertions[i]))
            assert again.status_code in (401, 429), again.text
    print(f"load run: {dict(statuses)}; {len(during)} requests entirely inside the outage, all 503")
