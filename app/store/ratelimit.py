"""Redis failure counters for the rate limiter (``app.service.ratelimit``).

Fixed windows: ``INCR`` + ``PEXPIRE NX`` + ``PTTL`` for every key in one Lua script call (atomic,
one reply to parse: a flood of bad assertions costs the broker as little as possible), so a
counter never exists without its expiry, the window starts at the first failure, and all replicas
share the count. Only failed requests come here: the success path costs no Redis round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.store import keyspace
from app.store.redis import RedisStore


# KEYS: the counters. ARGV: window (ms). Returns {count1, ttl1, count2, ttl2, ...}.
_HIT = """
local out = {}
for i, key in ipairs(KEYS) do
  local count = redis.call('INCR', key)
  redis.call('PEXPIRE', key, ARGV[1], 'NX')
  out[2 * i - 1] = count
  out[2 * i] = redis.call('PTTL', key)
end
return out
"""


class RedisFailureCounter(RedisStore):
    def __init__(self, redis: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self._hit = redis.register_script(_HIT)

    async def hit(self, subjects: Sequence[tuple[str, str]], window_ms: int) -> list[tuple[int, int]]:
        names = [keyspace.failures(kind, value) for kind, value in subjects]
        replies = await self._run(self._hit(keys=names, args=[window_ms]))
        out = []
        for i in range(len(names)):
            count, ttl = int(replies[2 * i]), int(replies[2 * i + 1])
            out.append((count, ttl if ttl > 0 else window_ms))
        return out
