"""Redis failure counters for the rate limiter (``app.service.ratelimit``).

Fixed windows: ``INCRBY`` + ``PEXPIRE NX`` + ``PTTL`` for every key in one Lua script call
(atomic, one reply to parse: a flood of bad assertions costs the broker as little as possible), so
a counter never exists without its expiry, the window starts at the first failure, and all
replicas share the count. The limiter hands in the failures of concurrent requests together
(``app.service.ratelimit``), so one subject may go up by more than one in a call. A subject
counted "once" per failure (a client, per signed assertion) goes up by one, and only if ``SET NX
PX`` of its marker succeeds in that same call. Only failed requests come here: the success path
costs no Redis round trip.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.store import keyspace
from app.store.redis import RedisStore

# KEYS: the counters, then the markers. ARGV[1]: window (ms); then per counter i, ARGV[2i]: 0 to
# count it always, or the index in KEYS of the marker that must be new for it to count, and
# ARGV[2i + 1]: how much to add.
# Returns {count1, ttl1, count2, ttl2, ...}; {0, 0} for a counter its marker kept from counting.
_HIT = """
local out = {}
for i = 1, (#ARGV - 1) / 2 do
  local key = KEYS[i]
  local gate = tonumber(ARGV[2 * i])
  if gate == 0 or redis.call('SET', KEYS[gate], '1', 'NX', 'PX', ARGV[1]) then
    out[2 * i - 1] = redis.call('INCRBY', key, ARGV[2 * i + 1])
    redis.call('PEXPIRE', key, ARGV[1], 'NX')
    out[2 * i] = redis.call('PTTL', key)
  else
    out[2 * i - 1] = 0
    out[2 * i] = 0
  end
end
return out
"""


class RedisFailureCounter(RedisStore):
    metric_op = "ratelimit"

    def __init__(self, redis: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self._hit = redis.register_script(_HIT)

    async def hit(self, subjects: Sequence[tuple[str, str, str | None]], window_ms: int,
                  amounts: Sequence[int] | None = None) -> list[tuple[int, int]]:
        names = [keyspace.failures(kind, value) for kind, value, _ in subjects]
        args: list[int] = [window_ms]
        for i, (kind, value, once) in enumerate(subjects):
            if once is None:
                args += (0, 1 if amounts is None else amounts[i])
            else:
                names.append(keyspace.failure_seen(kind, value, once))
                args += (len(names), 1)  # Lua's KEYS are 1-based; a "once" subject goes up by one
        replies = await self._run(self._hit(keys=names, args=args))
        out = []
        for i in range(len(subjects)):
            count, ttl = int(replies[2 * i]), int(replies[2 * i + 1])
            out.append((count, ttl if ttl > 0 or count == 0 else window_ms))
        return out
