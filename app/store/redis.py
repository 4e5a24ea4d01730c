"""Redis implementations of the store interfaces (redis-py asyncio, or fakeredis embedded).

Every Redis error, timeout or refusal becomes ``StoreUnavailable``: the caller decides whether
that fails closed (replay guard) or open (token cache).
"""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
from redis.asyncio import Redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from app.oauth.clients import ClientRecord
from app.store import keys
from app.store.base import StoreUnavailable

_STORE_ERRORS = (RedisError, OSError, asyncio.TimeoutError, UnicodeError)
_record_decoder = msgspec.json.Decoder(ClientRecord)


def connect(url: str | None, *, timeout: float, retries: int) -> Any:
    """A real Redis client with explicit short timeouts, or an embedded fakeredis when url is None."""
    if url is None:
        from fakeredis.aioredis import FakeRedis

        return FakeRedis()
    return Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), retries),
        health_check_interval=0,
        max_connections=256,
    )


class RedisStore:
    """Base: runs one command or pipeline under a hard deadline, mapping failures."""

    def __init__(self, redis: Any, *, timeout: float, retries: int) -> None:
        self.redis = redis
        self._deadline = timeout * (retries + 1) + 0.05

    async def _run(self, coro: Any) -> Any:
        try:
            async with asyncio.timeout(self._deadline):
                return await coro
        except _STORE_ERRORS as exc:
            raise StoreUnavailable(type(exc).__name__) from exc


class RedisReplayGuard(RedisStore):
    async def first_use(self, client_id: str, jti: str, request_id: str, ttl_ms: int) -> bool:
        # SET NX PX GET (Redis >= 7.0): one atomic command; the old value tells a replay (another
        # request's id) from our own retried write (our id).
        previous = await self._run(
            self.redis.set(keys.replay(client_id, jti), request_id, nx=True, px=ttl_ms, get=True)
        )
        return previous is None or previous == request_id.encode()


class RedisClientRegistry(RedisStore):
    async def get(self, client_id: str) -> ClientRecord | None:
        raw = await self._run(self.redis.get(keys.client(client_id)))
        if raw is None:
            return None
        record = _record_decoder.decode(raw)
        return record if record.client_id == client_id else None

    async def put(self, record: ClientRecord) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keys.client(record.client_id), msgspec.json.encode(record))
            pipe.sadd(keys.REGISTRY_INDEX, record.client_id)
            pipe.incr(keys.REGISTRY_EPOCH)
            await self._run(pipe.execute())

    async def delete(self, client_id: str) -> bool:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.delete(keys.client(client_id))
            pipe.srem(keys.REGISTRY_INDEX, client_id)
            pipe.incr(keys.REGISTRY_EPOCH)
            deleted, _, _ = await self._run(pipe.execute())
        return bool(deleted)

    async def list_ids(self) -> list[str]:
        members = await self._run(self.redis.smembers(keys.REGISTRY_INDEX))
        return sorted(m.decode() for m in members)

    async def epoch(self) -> int:
        return int(await self._run(self.redis.get(keys.REGISTRY_EPOCH)) or 0)

    async def ping(self) -> bool:
        return bool(await self._run(self.redis.ping()))
