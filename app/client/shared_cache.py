"""Optional token cache shared by the replicas of ONE client service, in that service's own Redis.

One token request per (client, scope, resource) across the replicas: the replica that finds no
fresh token takes a short lock (``SET NX PX``), asks the broker and stores the token; the others
wait briefly for it. The stored entry carries its renewal point, so every replica renews at the
same jittered moment and only the lock holder asks the broker.

Key names (hash tag keeps the pair on one cluster slot)::

    tbc:{<client_id>:<sha256(scope, resource)[:32]>}:token   JSON entry, TTL = until exp
    tbc:{<client_id>:<sha256(scope, resource)[:32]>}:lock    lock, PX = lock_ttl

The Redis holds live bearer tokens: it must be the client service's private Redis, not the
broker's and not one shared with other services. Any Redis error falls back to the process's own
cache and a direct token request (the shared cache is an optimisation, never a dependency).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from app.client.renewal import CachedToken

PREFIX = "tbc"


def cache_slot(client_id: str, scope: str, resource: str) -> str:
    digest = hashlib.sha256(json.dumps([client_id, scope, resource]).encode()).hexdigest()[:32]
    return f"{PREFIX}:{{{client_id}:{digest}}}"


def encode_entry(token: CachedToken) -> str:
    return json.dumps([token.access_token, token.scope, token.issued_at, token.expires_at, token.renew_at])


def decode_entry(raw: Any) -> CachedToken | None:
    try:
        access_token, scope, issued, expires, renew = json.loads(raw)
        return CachedToken(str(access_token), str(scope), float(issued), float(expires), float(renew))
    except (TypeError, ValueError):
        return None


def _ttl_ms(token: CachedToken, now: float) -> int:
    return max(1, int((token.expires_at - now) * 1000))


# Delete the key only when it still holds the expected value (a lock we own, a token we saw).
_DELETE_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class SharedTokenCache:
    """Blocking variant, over a ``redis.Redis`` client."""

    def __init__(self, redis: Any, *, lock_ttl: float = 5.0, wait: float = 3.0, poll: float = 0.05) -> None:
        self.redis = redis
        self.lock_ttl, self.wait, self.poll = lock_ttl, wait, poll

    def get(self, slot: str) -> CachedToken | None:
        raw = self.redis.get(slot + ":token")
        return None if raw is None else decode_entry(raw)

    def put(self, slot: str, token: CachedToken, now: float) -> None:
        self.redis.set(slot + ":token", encode_entry(token), px=_ttl_ms(token, now))

    def lock(self, slot: str) -> str | None:
        owner = secrets.token_hex(8)
        return owner if self.redis.set(slot + ":lock", owner, nx=True, px=int(self.lock_ttl * 1000)) else None

    def unlock(self, slot: str, owner: str) -> None:
        self.redis.eval(_DELETE_IF, 1, slot + ":lock", owner)

    def discard(self, slot: str, token: CachedToken) -> None:
        self.redis.eval(_DELETE_IF, 1, slot + ":token", encode_entry(token))


class AsyncSharedTokenCache(SharedTokenCache):
    """asyncio variant, over a ``redis.asyncio.Redis`` client."""

    async def get(self, slot: str) -> CachedToken | None:  # type: ignore[override]
        raw = await self.redis.get(slot + ":token")
        return None if raw is None else decode_entry(raw)

    async def put(self, slot: str, token: CachedToken, now: float) -> None:  # type: ignore[override]
        await self.redis.set(slot + ":token", encode_entry(token), px=_ttl_ms(token, now))

    async def lock(self, slot: str) -> str | None:  # type: ignore[override]
        owner = secrets.token_hex(8)
        return owner if await self.redis.set(slot + ":lock", owner, nx=True, px=int(self.lock_ttl * 1000)) else None

    async def unlock(self, slot: str, owner: str) -> None:  # type: ignore[override]
        await self.redis.eval(_DELETE_IF, 1, slot + ":lock", owner)

    async def discard(self, slot: str, token: CachedToken) -> None:  # type: ignore[override]
        await self.redis.eval(_DELETE_IF, 1, slot + ":token", encode_entry(token))
