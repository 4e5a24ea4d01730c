"""Store interfaces. The service layer depends on these, never on redis-py directly."""

from __future__ import annotations

from typing import Protocol

import msgspec

from app.oauth.clients import ClientRecord


class StoreUnavailable(Exception):
    """The store could not answer (down, slow, refusing, out of memory...). Fail closed."""


class ReplayGuard(Protocol):
    async def first_use(self, client_id: str, jti: str, request_id: str, ttl_ms: int) -> bool:
        """Record (client_id, jti) atomically; True only for the first use.

        ``request_id`` identifies this request, so a client-library retry of the very same command
        (reply lost after the write) is recognised as first use rather than a replay.
        """
        ...


class ClientRegistry(Protocol):
    async def get(self, client_id: str) -> ClientRecord | None: ...

    async def put(self, record: ClientRecord) -> None:
        """Create or replace a client and bump the registry epoch."""
        ...

    async def delete(self, client_id: str) -> bool: ...

    async def list_ids(self) -> list[str]: ...

    async def epoch(self) -> int:
        """A counter bumped by every change; replicas poll it to drop cached clients."""
        ...


class HealthCheck(Protocol):
    async def ping(self) -> bool: ...


class JwksUriCache(Protocol):
    """Key sets fetched from clients' ``jwks_uri``, shared by replicas (RFC 7591 §2)."""

    async def get(self, client_id: str, jwks_uri: str) -> bytes | None: ...

    async def put(self, client_id: str, jwks_uri: str, value: bytes, ttl_s: int) -> None: ...

    async def claim_refetch(self, client_id: str, jwks_uri: str, cooldown_ms: int) -> bool:
        """True for the one caller (on any replica) allowed to refetch in this interval."""
        ...


class CacheLookup(msgspec.Struct, frozen=True):
    """What the token endpoint's one round trip returns: the replay verdict and the cache entry.

    ``entry`` is only meaningful when ``first_use`` is True. ``cache_error`` names a failure of the
    cache half alone (the replay half succeeded): the caller then mints (the cache fails open).
    """

    first_use: bool
    entry: bytes | None
    cache_error: str | None = None
    #: The entry was absent and this request took the mint lock in the same atomic step.
    locked: bool = False


class TokenStore(Protocol):
    """Issued-token cache, stampede lock and revocation list (RFC 7009 §2)."""

    async def consume_and_lookup(
        self, client_id: str, jti: str, request_id: str, ttl_ms: int, cache_id: str | None, lock_ms: int = 2000
    ) -> CacheLookup:
        """In one atomic call: record the assertion's jti (as ``ReplayGuard.first_use``), read the
        cache entry and, when it is absent, take the mint lock for ``lock_ms``.

        Raises ``StoreUnavailable`` when the replay half has no answer (fail closed).
        """
        ...

    async def read(self, client_id: str, cache_id: str) -> bytes | None: ...

    async def lock_and_read(self, client_id: str, cache_id: str, owner: str, ttl_ms: int) -> tuple[bool, bytes | None]:
        """Take the stampede lock (``SET NX PX``) and read the entry, atomically: (locked, entry)."""
        ...

    async def unlock(self, client_id: str, cache_id: str) -> None: ...

    async def write(self, client_id: str, cache_id: str, token_jti: str, entry: bytes, ttl_ms: int) -> None:
        """Store the entry and its revocation pointer together, then release the lock."""
        ...

    async def revoke(self, client_id: str, token_jti: str, ttl_ms: int) -> None:
        """Mark the token revoked until it expires and purge the cache entry that holds it."""
        ...

    async def is_revoked(self, client_id: str, token_jti: str) -> bool: ...


class FailureCounter(Protocol):
    async def hit(self, keys: list[str], window_ms: int) -> list[tuple[int, int]]:
        """Count one failure under each key, atomically; return ``(count, ms_left)`` per key.

        A key's window starts at its first failure and is never extended by later ones.
        """
        ...
