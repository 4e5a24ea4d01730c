"""The broker on a real 3-node Redis Cluster (redis-server --cluster-enabled yes on loopback).

Multi-key transactions must stay in one slot (hash tags in ``app.store.keyspace``); the hot path's
non-transactional pipeline (replay record + cache read, two slots) must work across nodes.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from redis.crc import key_slot

from app.config import ConfigError, Settings
from app.store import keyspace
from tests.conftest import Broker, FrozenClock
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import ISS, RS1, TestClient, form
from tests.redis_topology import Cluster, redis_cluster  # noqa: F401 (fixture)
from tests.test_replay import _admin_register


def _slots(*names: str) -> set[int]:
    return {key_slot(name.encode()) for name in names}


@pytest.mark.parametrize(
    "group",
    [
        pytest.param(lambda: [keyspace.client("a"), keyspace.client("zz"), keyspace.REGISTRY_INDEX, keyspace.REGISTRY_EPOCH], id="registry-put-delete"),
        pytest.param(lambda: [keyspace.replay("c1", "j"), keyspace.token_entry("c1", "x"), keyspace.token_lock("c1", "x")],
                     id="token-endpoint-script"),
        pytest.param(lambda: [keyspace.token_entry("c1", "x"), keyspace.token_lock("c1", "x"), keyspace.token_pointer("c1", "j"),
                              keyspace.token_revoked("c1", "j")], id="token-cache-write-revoke"),
        pytest.param(lambda: [keyspace.failures("addr", "127.0.0.1"), keyspace.failures("client", "c1"),
                              keyspace.failure_seen("client", "c1", "0" * 64)], id="ratelimit-hit"),
    ],
)
def test_every_multi_key_transaction_stays_in_one_slot(group: Any) -> None:
    assert len(_slots(*group())) == 1


def test_cluster_setting_needs_a_url() -> None:
    with pytest.raises(ConfigError, match="BROKER_REDIS_CLUSTER needs BROKER_REDIS_URL"):
        Settings.from_env({"BROKER_REDIS_CLUSTER": "true"})


@pytest.fixture
def cluster(redis_cluster: Cluster) -> Cluster:
    redis_cluster.flush()
    return redis_cluster


@pytest.mark.redis
def test_token_replay_and_registry_on_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=cluster.url, redis_cluster=True)
    clock = FrozenClock(time.time())
    with Broker(settings, clock) as b:  # create_app connects (RedisCluster) and closes the client
        c1 = TestClient("c1")
        b.register(c1)  # MULTI over {tb:registry}
        assertion = c1.assertion(clock.now)
        assert_token(b.token(form(assertion)))
        assert_invalid_client(b.token(form(assertion)))  # replay caught
        for _ in range(10):
            assert_token(b.token(form(c1.assertion(clock.now), resource=RS1)))
        # A client's replay, cache and lock keys share one slot (one script call); clients spread.
        for i in range(12):
            other = TestClient(f"spread-{i}")
            b.register(other)
            assert_token(b.token(form(other.assertion(clock.now))))
        b.update("c1", enabled=False)
        assert_invalid_client(b.token(form(c1.assertion(clock.now))))
        samples = [ln for ln in b.management.get("/metrics").text.splitlines() if not ln.startswith("#")]
        assert [ln for ln in samples if ln.startswith("broker_redis_errors_total")] == []  # declared, never counted
    per_node = {p: [k for k in _keys_on(p) if b":replay:" in k] for p in cluster.ports}
    assert sum(len(v) for v in per_node.values()) == 11 + 12  # the disabled client's jti is never recorded
    assert sum(1 for v in per_node.values() if v) >= 2  # the hot path ran against several nodes


def _keys_on(port: int) -> list[bytes]:
    import redis

    r = redis.Redis(host="127.0.0.1", port=port)
    try:
        return list(r.scan_iter(count=1000))
    finally:
        r.close()


@pytest.mark.redis
@pytest.mark.live
def test_three_processes_on_the_cluster(cluster: Cluster, spawn_broker: Any) -> None:
    env = {"BROKER_REDIS_CLUSTER": "true", "BROKER_RATELIMIT_MODE": "observe"}
    brokers = [spawn_broker(redis_url=cluster.url, env=env) for _ in range(3)]
    client = TestClient("c1")
    _admin_register(brokers[0].url, spawn_broker.keys_dir, client)  # registered through one (new to all: read on first use)...
    for b in brokers:  # ...served by all
        assert_token(httpx.post(b.url + "/token", data=form(client.assertion())))

    n, k = 10, 6
    assertions = [client.assertion() for _ in range(n)]

    async def storm() -> list[tuple[int, int]]:
        async with httpx.AsyncClient(timeout=20, limits=httpx.Limits(max_connections=n * k)) as http:
            async def post(i: int, j: int) -> tuple[int, int]:
                resp = await http.post(brokers[(i + j) % 3].url + "/token", data=form(assertions[i]))
                return i, resp.status_code

            return await asyncio.gather(*(post(i, j) for i in range(n) for j in range(k)))

    results = asyncio.run(storm())
    assert Counter(status for _, status in results) == {200: n, 401: n * (k - 1)}
    assert Counter(i for i, status in results if status == 200) == {i: 1 for i in range(n)}
