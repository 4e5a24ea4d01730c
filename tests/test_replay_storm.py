"""Replay storm (attack matrix: `replay-race`): N fresh assertions, each sent K times at once across several
broker processes sharing one real Redis → exactly N tokens and N×(K−1) ``invalid_client``.

The jti record is one atomic ``SET NX PX GET`` in Redis, so which replica wins does not matter:
exactly one request per assertion gets a token.
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
from tests.helpers import ISS, TestClient, decode_unverified, form

pytestmark = [pytest.mark.redis, pytest.mark.live]

N, K, PROCESSES = 20, 10, 3
GROUP = 3  # assertions in flight at once (GROUP x K requests)
INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}


def test_replay_storm_across_processes(real_redis: RedisServer, spawn_broker: Any, tmp_path: Path) -> None:
    # The storm is 180 failed authentications from one address: count them, but do not block.
    brokers = [spawn_broker(redis_url=real_redis.url, env={"BROKER_RATELIMIT_MODE": "observe"}) for _ in range(PROCESSES)]
    c1 = TestClient("c1")
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=real_redis.url)
    with Broker(settings, FrozenClock(time.time())) as admin:
        admin.register(c1)  # new to every replica: each reads it from the registry on first use

    now = time.time()
    assertions = [c1.assertion(now) for _ in range(N)]

    async def storm() -> list[tuple[int, int, dict[str, Any]]]:
        limits = httpx.Limits(max_connections=N * K)
        async with httpx.AsyncClient(timeout=20, limits=limits) as http:
            async def post(i: int, k: int) -> tuple[int, int, dict[str, Any]]:
                url = brokers[(i + k) % PROCESSES].url + "/token"
                resp = await http.post(url, data=form(assertions[i]))
                return i, resp.status_code, resp.json()

            # The K copies of an assertion go out together; a few assertions at a time keep the
            # in-flight count (and so the event-loop lag on this 2-core machine) below the Redis
            # timeout: an overloaded replica answers 503, which is correct but not this test.
            out: list[tuple[int, int, dict[str, Any]]] = []
            for first in range(0, N, GROUP):
                out += await asyncio.gather(*(post(i, k) for i in range(first, min(first + GROUP, N)) for k in range(K)))
            return out

    results = asyncio.run(storm())
    statuses = Counter(status for _, status, _ in results)
    assert statuses == {200: N, 401: N * (K - 1)}, statuses
    winners = Counter(i for i, status, _ in results if status == 200)
    assert winners == {i: 1 for i in range(N)}  # exactly one token per assertion
    assert all(body == INVALID_CLIENT for _, status, body in results if status == 401)
    # (The tokens themselves may be one cached token: the cache serves authenticated requests.)
    assert all(decode_unverified(body["access_token"])[1]["client_id"] == "c1" for _, s, body in results if s == 200)
    replays = sum(1 for b in brokers for e in b.logs() if e.get("event") == "replay.rejected")
    assert replays == N * (K - 1)
