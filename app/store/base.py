"""Store interfaces. The service layer depends on these, never on redis-py directly."""

from __future__ import annotations

from typing import Protocol

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
