"""Optional token cache shared by the replicas of ONE client service, in that service's own Redis.

One token request per (client, scope, resource) across the replicas: the replica that finds no
fresh token takes a short lock (``SET NX PX``), asks the broker and stores the token; the others
poll briefly for it. The stored entry carries its renewal point, so every replica renews at the
same jittered moment and only the lock holder asks the broker. The protocol itself is the token
flow's (``flow.py``); this module builds its Redis commands, and the two shells run them.

Key names (the hash tag keeps the pair on one cluster slot)::

    tbc:{<client_id>:<sha256(client_id, scope, resource)[:32]>}:token   JSON entry, TTL = until exp
    tbc:{<client_id>:<sha256(client_id, scope, resource)[:32]>}:lock    lock, PX = lock_ttl

With DPoP on, the DPoP key's thumbprint joins the hashed values: a DPoP-bound token is only of use
to the replicas holding the same DPoP key (loaded from one file), so only they share it.

The Redis holds live bearer tokens: it must be the client service's private Redis, not the
broker's and not one shared with other services. Any Redis error falls back to the process's own
cache and a direct token request (the shared cache is an optimisation, never a dependency).
"""

from __future__ import annotations

import hashlib
import json
import secrets
from typing import Any

from token_broker_client.effects import RedisCommand
from token_broker_client.renewal import CachedToken

PREFIX = "tbc"

try:
    from redis.exceptions import RedisError
except ImportError:  # no [redis] extra: no redis-py client can be handed to the cache either
    #: What a failed shared-cache command raises (a connection error is an ``OSError`` too).
    CACHE_ERRORS: tuple[type[Exception], ...] = (OSError,)
else:
    CACHE_ERRORS = (RedisError, OSError)

# Delete the key only when it still holds the expected value (a lock we own, a token we saw).
_DELETE_IF = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def cache_slot(client_id: str, scope: str, resource: str, jkt: str = "") -> str:
    """The slot of a token; ``jkt`` (a DPoP key's thumbprint) keeps DPoP-bound tokens per key."""
    digest = hashlib.sha256(json.dumps([client_id, scope, resource, *([jkt] if jkt else [])]).encode()).hexdigest()[:32]
    return f"{PREFIX}:{{{client_id}:{digest}}}"


def encode_entry(token: CachedToken) -> str:
    return json.dumps([token.access_token, token.scope, token.issued_at, token.expires_at, token.renew_at])


def decode_entry(raw: Any) -> CachedToken | None:
    """The stored entry, or None for no entry or one this version cannot read."""
    if raw is None:
        return None
    try:
        access_token, scope, issued, expires, renew = json.loads(raw)
        return CachedToken(str(access_token), str(scope), float(issued), float(expires), float(renew))
    except (TypeError, ValueError):
        return None


class SharedCacheCommands:
    """The settings and the Redis commands of the shared cache, without I/O: both shells below."""

    def __init__(self, redis: Any, *, lock_ttl: float = 5.0, wait: float = 3.0, poll: float = 0.05) -> None:
        self.redis = redis
        self.lock_ttl, self.wait, self.poll = lock_ttl, wait, poll

    def read(self, slot: str) -> RedisCommand:
        """Its reply goes through ``decode_entry``."""
        return RedisCommand("get", (slot + ":token",))

    def write(self, slot: str, token: CachedToken, now: float) -> RedisCommand:
        ttl_ms = max(1, int((token.expires_at - now) * 1000))
        return RedisCommand("set", (slot + ":token", encode_entry(token)), {"px": ttl_ms})

    def lock(self, slot: str) -> tuple[str, RedisCommand]:
        """A new owner value and the command that takes the lock with it (a truthy reply: taken)."""
        owner = secrets.token_hex(8)
        return owner, RedisCommand("set", (slot + ":lock", owner), {"nx": True, "px": int(self.lock_ttl * 1000)})

    def unlock(self, slot: str, owner: str) -> RedisCommand:
        return RedisCommand("eval", (_DELETE_IF, 1, slot + ":lock", owner))

    def discard(self, slot: str, token: CachedToken) -> RedisCommand:
        return RedisCommand("eval", (_DELETE_IF, 1, slot + ":token", encode_entry(token)))


class SharedTokenCache(SharedCacheCommands):
    """Blocking shell over a ``redis.Redis`` client; used by ``BrokerClient.get_token``."""

    def execute(self, command: RedisCommand) -> Any:
        return getattr(self.redis, command.method)(*command.args, **command.kwargs)


class AsyncSharedTokenCache(SharedCacheCommands):
    """asyncio shell over a ``redis.asyncio.Redis`` client; used by ``BrokerClient.aget_token``."""

    async def execute(self, command: RedisCommand) -> Any:
        return await getattr(self.redis, command.method)(*command.args, **command.kwargs)
