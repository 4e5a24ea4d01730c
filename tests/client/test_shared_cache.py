"""Shared token cache for the replicas of one client service, on a real redis-server."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
import redis.asyncio

from tests.client.conftest import CountingTransport, LiveBroker
from token_broker_client import AsyncSharedTokenCache, BrokerClient, RenewalPolicy, SharedTokenCache
from token_broker_client.effects import RedisCommand
from token_broker_client.shared_cache import cache_slot

pytestmark = pytest.mark.redis


@pytest.fixture
def sync_redis(real_redis: Any) -> Any:
    client = redis.Redis(host="127.0.0.1", port=real_redis.port, socket_timeout=2)
    yield client
    client.close()


def test_replicas_share_one_token_request(make_client: Any, transport: CountingTransport, sync_redis: Any) -> None:
    replicas = [make_client(shared_cache=SharedTokenCache(sync_redis)) for _ in range(3)]
    transport.delay = 0.2
    start = threading.Barrier(30)

    def call(i: int) -> str:
        start.wait(10)
        return replicas[i % 3].get_token()

    with ThreadPoolExecutor(30) as pool:
        tokens = list(pool.map(call, range(30)))
    assert (len(set(tokens)), transport.token_requests) == (1, 1), [f["client_assertion"][-6:] for f in transport.token_forms]
    assert sync_redis.exists(cache_slot("c1", "", "") + ":token") == 1
    assert sync_redis.exists(cache_slot("c1", "", "") + ":lock") == 0


def test_replicas_renew_once_at_the_shared_renewal_point(make_client: Any, transport: CountingTransport,
                                                         sync_redis: Any, broker: Any) -> None:
    a = make_client(shared_cache=SharedTokenCache(sync_redis), renewal=RenewalPolicy(rng=lambda: 0.0))
    b = make_client(shared_cache=SharedTokenCache(sync_redis), renewal=RenewalPolicy(rng=lambda: 0.999))
    first = a.get_token()
    assert b.get_token() == first  # b adopts a's entry, and a's renewal point (80%)
    broker.clock.advance(240)
    second = b.get_token()
    assert second != first and a.get_token() == second
    assert transport.token_requests == 2


def test_invalidate_removes_the_shared_entry(make_client: Any, transport: CountingTransport, sync_redis: Any,
                                             broker: Any) -> None:
    a = make_client(shared_cache=SharedTokenCache(sync_redis))
    b = make_client(shared_cache=SharedTokenCache(sync_redis))
    token = a.get_token()
    assert b.get_token() == token
    broker.clock.advance(200)  # past the broker's own cache threshold: the next request mints
    a.invalidate(token)
    assert b.get_token() == token  # b still holds it in memory
    b.invalidate(token)
    assert b.get_token() != token
    assert transport.token_requests == 2


def test_redis_down_falls_back_to_direct_requests(make_client: Any, transport: CountingTransport) -> None:
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    from tests.conftest import free_port

    dead = redis.Redis(host="127.0.0.1", port=free_port(), socket_timeout=0.2, socket_connect_timeout=0.2,
                       retry=Retry(NoBackoff(), 0))
    client = make_client(shared_cache=SharedTokenCache(dead))
    assert client.get_token() == client.get_token()
    assert transport.token_requests == 1
    dead.close()


def test_async_replicas_share_one_token_request(live_broker: LiveBroker, real_redis: Any) -> None:
    key = live_broker.register("shared-async")

    async def run() -> list[str]:
        r = redis.asyncio.Redis(host="127.0.0.1", port=real_redis.port, socket_timeout=2)
        try:
            replicas = [BrokerClient(live_broker.issuer, "shared-async", key, alg="ES256", kid="shared-async-1",
                                     shared_cache=AsyncSharedTokenCache(r)) for _ in range(4)]
            return await asyncio.gather(*(replicas[i % 4].aget_token() for i in range(100)))
        finally:
            await r.aclose()

    tokens = asyncio.run(run())
    assert len(set(tokens)) == 1
    assert live_broker.issued("shared-async") == 1


def test_lock_taken_after_the_entry_appeared_is_released(make_client: Any, transport: CountingTransport,
                                                         sync_redis: Any) -> None:
    """Race: a replica saw no entry, the holder stored one and unlocked, then this replica locked."""
    cache = SharedTokenCache(sync_redis)
    a = make_client(shared_cache=cache)
    token = a.get_token()
    b = make_client(shared_cache=cache)
    slot = cache_slot("c1", "", "")
    real_execute, reads = cache.execute, []

    def first_read_misses(command: RedisCommand) -> Any:
        if command.method == "get":
            reads.append(command)
            if len(reads) == 1:
                return None
        return real_execute(command)

    cache.execute = first_read_misses  # type: ignore[method-assign]
    assert b.get_token() == token
    assert transport.token_requests == 1
    assert sync_redis.exists(slot + ":lock") == 0
