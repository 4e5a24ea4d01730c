"""In-process cache of prepared clients over the shared registry.

Parsing a client's keys costs far more than a token request may spend, so each replica keeps the
prepared ``Client`` objects and drops them all whenever the registry epoch (bumped by every
change through any replica) moves. Each replica polls the epoch every ``poll_interval`` seconds,
so a change made anywhere reaches every replica within that bound (default 0.25 s; the promise
is 1 s). A fetch that was in flight across an epoch change is not cached.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.oauth.clients import Client, prepare_client
from app.store.base import ClientRegistry, StoreUnavailable

MAX_CACHED = 10_000


class ClientDirectory:
    def __init__(self, registry: ClientRegistry, *, poll_interval: float, log: Any) -> None:
        self._registry = registry
        self._poll_interval = poll_interval
        self._log = log
        self._cache: dict[str, Client | None] = {}
        self._generation = 0
        self._epoch: int | None = None

    async def get(self, client_id: str) -> Client | None:
        try:
            return self._cache[client_id]
        except KeyError:
            pass
        generation = self._generation
        record = await self._registry.get(client_id)
        client = None
        if record is not None:
            try:
                client = prepare_client(record)
            except Exception as exc:  # a stored key that no longer parses: unusable, loudly
                self._log.error("client.keys_unusable", client_id=client_id, error=type(exc).__name__)
        if generation == self._generation:
            if len(self._cache) >= MAX_CACHED:
                self._cache.clear()
            self._cache[client_id] = client
        return client

    def invalidate(self) -> None:
        self._generation += 1
        self._cache.clear()

    async def refresh(self) -> None:
        try:
            epoch = await self._registry.epoch()
        except StoreUnavailable:
            self._epoch = None  # cannot tell what changed meanwhile: start over when it returns
            self.invalidate()
            return
        if epoch != self._epoch:
            self._epoch = epoch
            self.invalidate()

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._poll_interval)
