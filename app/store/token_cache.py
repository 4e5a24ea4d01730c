"""Redis implementation of ``TokenStore``: issued-token cache, stampede lock, RFC 7009 revocations.

The token endpoint's hot path is one Redis call (``consume_and_lookup``), a Lua script that runs
atomically:

1. the replay record ``SET replay-key request-id NX PX ttl GET`` (the jti is consumed only after
   the assertion verified); a value that is not this request's id means replay, and the script
   stops there;
2. ``GET entry`` (read with ``pcall``: a broken cache key must not fail the request);
3. only when the entry is absent, the stampede lock ``SET lock request-id NX PX lock_ms``.

So a cache hit costs one round trip and a miss two (this call, then the write), and the read and
the lock are one atomic step (no request can read "absent", lose the race to another's write and
mint a second token). The three keys share the client's hash tag (one Redis Cluster slot). An
error of the call as a whole fails closed (``StoreUnavailable``); an error reading the entry alone
comes back in ``CacheLookup.cache_error`` and the caller mints (fails open).

Entries, pointers and revocation markers all expire with the token they describe, so memory is
bounded by the tokens alive at once; a stampede lock lives ``LOCK_MS`` (2 s) at most.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from app.store import keyspace
from app.store.base import LOCK_MS, CacheLookup, StoreUnavailable
from app.store.redis import RedisReplayGuard


# KEYS: replay record, cache entry, mint lock. ARGV: request id, replay ttl (ms), lock ttl (ms).
# Returns {0} for a replay, {1, entry|nil, locked} on first use, {2, error} when the entry read failed.
# Only the replay SET may fail the call: cache errors are caught (pcall) so the cache fails open.
_CONSUME_AND_LOOKUP = """
local previous = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if previous and previous ~= ARGV[1] then
  return {0}
end
local entry = redis.pcall('GET', KEYS[2])
if type(entry) == 'table' and entry.err then
  return {2, entry.err}
end
if entry then
  return {1, entry, 0}
end
local locked = redis.pcall('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[3])
if type(locked) == 'table' and locked.err then
  return {1, false, 0}
end
return {1, false, locked and 1 or 0}
"""

# KEYS: cache entry, revocation pointer, mint lock. ARGV: entry, ttl (ms).
_WRITE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], KEYS[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""


class RedisTokenStore(RedisReplayGuard):
    """Also a ``ReplayGuard``: the plain replay record (``first_use``) is the fallback below."""

    metric_op = "token_cache"

    def __init__(self, redis: Any, **options: Any) -> None:
        super().__init__(redis, **options)
        self._consume = redis.register_script(_CONSUME_AND_LOOKUP)
        self._write = redis.register_script(_WRITE)

    def cache_id(self, client_id: str, scopes: tuple[str, ...], audience: str, registration_id: str, version: int,
                 kid: str) -> str:
        return keyspace.token_cache_id(client_id, scopes, audience, registration_id, version, kid)

    async def consume_and_lookup(
        self, client_id: str, jti: str, request_id: str, ttl_ms: int, cache_id: str | None, lock_ms: int = LOCK_MS
    ) -> CacheLookup:
        if cache_id is None:  # the grant was refused: only the replay record matters
            return CacheLookup(await self.first_use(client_id, jti, request_id, ttl_ms), None)
        names = [keyspace.replay(client_id, jti), keyspace.token_entry(client_id, cache_id), keyspace.token_lock(client_id, cache_id)]
        try:
            # Labelled "replay": this is the token endpoint's replay round trip (the cache rides along).
            reply = await self._run(self._consume(keys=names, args=[request_id, ttl_ms, lock_ms]), op="replay")
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, ResponseError):
                raise  # no answer at all: the replay is unconfirmed (fail closed)
            # Redis refused the script as a whole before running it (an ACL that denies the cache
            # keys, OOM, READONLY...): the replay record alone decides, the cache fails open.
            first = await self.first_use(client_id, jti, request_id, ttl_ms)
            return CacheLookup(first, None, type(exc.__cause__).__name__)
        if reply[0] == 0:
            return CacheLookup(False, None)
        if reply[0] == 2:  # the entry read failed (an error reply: WRONGTYPE...): mint instead
            self._count_error(self.metric_op, "ResponseError")
            return CacheLookup(True, None, "cache_read_error")
        entry = reply[1]
        return CacheLookup(True, None if entry is None else bytes(entry), None, bool(reply[2]))

    async def read(self, client_id: str, cache_id: str) -> bytes | None:
        value = await self._run(self.redis.get(keyspace.token_entry(client_id, cache_id)))
        return None if value is None else bytes(value)

    async def lock_and_read(self, client_id: str, cache_id: str, owner: str, ttl_ms: int) -> tuple[bool, bytes | None]:
        # One MULTI (same hash tag): the entry as it is when the lock is decided. A miss read before
        # another request's write may reach the lock after that write released it; it then sees
        # the entry here instead of minting a second token.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keyspace.token_lock(client_id, cache_id), owner, nx=True, px=ttl_ms)
            pipe.get(keyspace.token_entry(client_id, cache_id))
            locked, entry = await self._run(pipe.execute())
        return bool(locked), None if entry is None else bytes(entry)

    async def unlock(self, client_id: str, cache_id: str) -> None:
        await self._run(self.redis.delete(keyspace.token_lock(client_id, cache_id)))

    async def write(self, client_id: str, cache_id: str, token_jti: str, entry: bytes, ttl_ms: int) -> None:
        # One script call (one reply to parse, not a five-reply MULTI): the entry, the pointer that
        # lets revocation find it, and the lock released (losers poll the entry; releasing early
        # only lets a later miss mint sooner).
        names = [keyspace.token_entry(client_id, cache_id), keyspace.token_pointer(client_id, token_jti),
                 keyspace.token_lock(client_id, cache_id)]
        await self._run(self._write(keys=names, args=[entry, ttl_ms]))

    async def revoke(self, client_id: str, token_jti: str, ttl_ms: int) -> None:
        pointer = keyspace.token_pointer(client_id, token_jti)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keyspace.token_revoked(client_id, token_jti), b"1", px=ttl_ms)
            pipe.get(pointer)
            _, entry_key = await self._run(pipe.execute())
        if entry_key is not None:
            # The entry may meanwhile hold a newer token for the same key: deleting it costs one mint.
            await self._run(self.redis.delete(bytes(entry_key).decode("ascii"), pointer))

    async def is_revoked(self, client_id: str, token_jti: str) -> bool:
        return bool(await self._run(self.redis.exists(keyspace.token_revoked(client_id, token_jti))))
