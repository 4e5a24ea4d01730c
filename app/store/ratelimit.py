"""Redis failure counters for the rate limiter (``app.service.ratelimit``).

Fixed windows: ``INCR`` + ``PEXPIRE NX`` + ``PTTL`` for every key in one ``MULTI``, so a counter
never exists without its expiry, the window starts at the first failure, and all replicas share
the count. Only failed requests come here: the success path costs no Redis round trip.
"""

from __future__ import annotations

from app.store.redis import RedisStore


class RedisFailureCounter(RedisStore):
    async def hit(self, keys: list[str], window_ms: int) -> list[tuple[int, int]]:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in keys:
                pipe.incr(key)
                pipe.pexpire(key, window_ms, nx=True)
                pipe.pttl(key)
            replies = await self._run(pipe.execute())
        out = []
        for i in range(len(keys)):
            count, _, ttl = replies[3 * i : 3 * i + 3]
            out.append((int(count), int(ttl) if int(ttl) > 0 else window_ms))
        return out
