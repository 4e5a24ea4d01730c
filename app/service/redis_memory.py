"""Redis memory gauges for ``/metrics``, refreshed by a background task every few seconds.

Nothing on the request path: the task asks ``INFO memory`` (``MemoryProbe``) and sets
``broker_redis_memory_used_bytes``, ``broker_redis_memory_max_bytes`` and
``broker_redis_maxmemory_policy_info``. When Redis does not answer or refuses ``INFO`` (managed
services may), the gauges are dropped rather than left stale, and the failure is logged once
(``redis_memory.unavailable``) until a refresh succeeds again. It is not counted in
``broker_redis_errors_total``: a refused INFO must not look like a failing replay store.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.metrics import REDIS_MAXMEMORY_POLICY, REDIS_MEMORY_MAX, REDIS_MEMORY_USED, Metrics
from app.store.base import MemoryProbe, StoreUnavailable

#: Seconds between two refreshes: memory fills over minutes; one INFO per replica every 5 s is nothing.
REFRESH_INTERVAL = 5.0


class RedisMemoryMonitor:
    def __init__(self, probe: MemoryProbe, *, metrics: Metrics, log: Any, interval: float = REFRESH_INTERVAL) -> None:
        self._probe = probe
        self._metrics = metrics
        self._log = log
        self._interval = interval
        self._failing = False

    async def refresh(self) -> bool:
        """Returns: whether the gauges now hold a fresh reading."""
        try:
            usage = await self._probe.usage()
        except StoreUnavailable as exc:
            for name in (REDIS_MEMORY_USED, REDIS_MEMORY_MAX, REDIS_MAXMEMORY_POLICY):
                self._metrics.clear_gauge(name)
            if not self._failing:
                self._log.warning("redis_memory.unavailable", error=str(exc))
            self._failing = True
            return False
        if self._failing:
            self._log.info("redis_memory.available")
        self._failing = False
        self._metrics.set(REDIS_MEMORY_USED, usage.used)
        self._metrics.set(REDIS_MEMORY_MAX, usage.max)
        self._metrics.clear_gauge(REDIS_MAXMEMORY_POLICY)
        self._metrics.set(REDIS_MAXMEMORY_POLICY, 1, policy=usage.policy)
        return True

    async def run(self) -> None:
        """Refresh now, then every ``interval`` seconds, until cancelled."""
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)
