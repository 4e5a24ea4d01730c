"""Redis implementations of the store interfaces (redis-py asyncio, or fakeredis embedded).

Every Redis error, timeout or refusal becomes ``StoreUnavailable``: the caller decides whether
that fails closed (replay guard) or open (token cache).
"""

from __future__ import annotations

import asyncio
from time import perf_counter
from typing import Any

import msgspec
from redis.asyncio import ConnectionPool, Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.asyncio.retry import Retry  # the sync Retry never retries a coroutine

from app.metrics import REDIS_ERRORS, REDIS_SECONDS, Metrics
from app.oauth.clients import ClientRecord
from app.store import keyspace
from app.store.base import StoreUnavailable

_STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError, UnicodeError)
_record_decoder = msgspec.json.Decoder(ClientRecord)


def connect(url: str | None, *, timeout: float, retries: int, cluster: bool = False,
            sentinels: tuple[str, ...] = (), sentinel_master: str | None = None) -> Any:
    """A real Redis client with explicit short timeouts, or an embedded fakeredis when url is None.

    ``cluster``: a ``RedisCluster`` that discovers the other nodes from ``url`` (every multi-key
    transaction or script uses one hash tag, see ``app.store.keyspace``). ``sentinels``: the master
    that the Sentinels name ``sentinel_master``, followed across failovers.
    """
    opts: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
        "retry": Retry(NoBackoff(), retries),
        "health_check_interval": 0,
        "max_connections": 256,
    }
    if sentinels:
        from redis.asyncio.sentinel import Sentinel

        if url is not None:  # db, username, password, TLS from the URL; its host is not used
            pool_kwargs = ConnectionPool.from_url(url).connection_kwargs
            opts.update({k: v for k, v in pool_kwargs.items() if k in ("db", "username", "password", "ssl")})
        nodes = [(host, int(port)) for host, _, port in (a.rpartition(":") for a in sentinels)]
        sentinel = Sentinel(nodes, sentinel_kwargs={"socket_timeout": timeout, "socket_connect_timeout": timeout})
        opts.pop("max_connections")
        master = sentinel.master_for(sentinel_master, redis_class=_SentinelMaster, **opts)
        master.sentinel = sentinel
        return master
    if url is None:
        from fakeredis.aioredis import FakeRedis

        return FakeRedis()
    if cluster:
        from redis.asyncio.cluster import RedisCluster

        return RedisCluster.from_url(url, **opts)
    return Redis.from_url(url, **opts)


class _SentinelMaster(Redis):
    """The master named by the Sentinels; closing it also closes the connections to the Sentinels."""

    sentinel: Any = None

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        await super().aclose(close_connection_pool)
        for node in getattr(self.sentinel, "sentinels", ()):
            await node.aclose()


class RedisStore:
    """Base: runs one Redis call (a command, a MULTI transaction or a Lua script) under a hard
    deadline, mapping every failure to ``StoreUnavailable``."""

    #: The ``op`` label of this store's Redis metrics (``broker_redis_*``).
    metric_op = "store"

    def __init__(self, redis: Any, *, timeout: float, retries: int, metrics: Metrics | None = None) -> None:
        self.redis = redis
        self._deadline = timeout * (retries + 1) + 0.05
        self._metrics = metrics

    async def _run(self, coro: Any, op: str | None = None) -> Any:
        op = op or self.metric_op
        start = perf_counter()
        try:
            async with asyncio.timeout(self._deadline):
                return await coro
        except _STORE_ERRORS as exc:
            self._count_error(op, type(exc).__name__)
            raise StoreUnavailable(type(exc).__name__) from exc
        finally:
            if self._metrics is not None:
                self._metrics.observe(REDIS_SECONDS, perf_counter() - start, op=op)

    def _count_error(self, op: str, error: str) -> None:
        if self._metrics is not None:
            self._metrics.inc(REDIS_ERRORS, op=op, error=error)


class RedisReplayGuard(RedisStore):
    metric_op = "replay"

    async def first_use(self, client_id: str, jti: str, request_id: str, ttl_ms: int) -> bool:
        # SET NX PX GET (Redis >= 7.0): one atomic command; the old value tells a replay (another
        # request's id) from our own retried write (our id).
        previous = await self._run(
            self.redis.set(keyspace.replay(client_id, jti), request_id, nx=True, px=ttl_ms, get=True), op="replay"
        )
        return previous is None or previous == request_id.encode()


class RedisClientRegistry(RedisStore):
    metric_op = "registry"

    async def get(self, client_id: str) -> ClientRecord | None:
        raw = await self._run(self.redis.get(keyspace.client(client_id)))
        if raw is None:
            return None
        record = _record_decoder.decode(raw)
        return record if record.client_id == client_id else None

    async def put(self, record: ClientRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keyspace.client(record.client_id), msgspec.json.encode(record))
            pipe.sadd(keyspace.REGISTRY_INDEX, record.client_id)
            pipe.incr(keyspace.REGISTRY_EPOCH)
            await self._run(pipe.execute())

    async def delete(self, client_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keyspace.client(client_id))
            pipe.srem(keyspace.REGISTRY_INDEX, client_id)
            pipe.incr(keyspace.REGISTRY_EPOCH)
            deleted, _, _ = await self._run(pipe.execute())
        return bool(deleted)

    async def list_ids(self) -> list[str]:
        members = await self._run(self.redis.smembers(keyspace.REGISTRY_INDEX))
        return sorted(m.decode() for m in members)

    async def epoch(self) -> int:
        return int(await self._run(self.redis.get(keyspace.REGISTRY_EPOCH)) or 0)

    async def ping(self) -> bool:
        return bool(await self._run(self.redis.ping()))


class RedisJwksUriCache(RedisStore):
    async def get(self, client_id: str, jwks_uri: str) -> bytes | None:
        value = await self._run(self.redis.get(keyspace.jwks_uri_cache(client_id, jwks_uri)))
        return None if value is None else bytes(value)

    async def put(self, client_id: str, jwks_uri: str, value: bytes, ttl_s: int) -> None:
        await self._run(self.redis.set(keyspace.jwks_uri_cache(client_id, jwks_uri), value, ex=max(ttl_s, 1)))

    async def claim_refetch(self, client_id: str, jwks_uri: str, cooldown_ms: int) -> bool:
        return bool(await self._run(self.redis.set(keyspace.jwks_uri_refetch(client_id, jwks_uri), b"1", nx=True, px=max(cooldown_ms, 1))))
