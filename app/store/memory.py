"""Redis memory as ``INFO memory`` reports it, for the memory gauges (``app.service.redis_memory``).

With ``noeviction`` (which replay protection needs) a full Redis refuses every write, and the
token endpoint answers 503 to everyone: this lets an operator see it coming. On a Cluster every
primary is asked and the one nearest its limit is reported (one full node is enough to refuse
the clients whose keys live there). Managed services may refuse ``INFO``: that is a
``StoreUnavailable`` like any other refusal, and the caller reports nothing.
"""

from __future__ import annotations

from typing import Any

from app.store.base import MemoryUsage, StoreUnavailable
from app.store.redis import RedisStore


class RedisMemoryProbe(RedisStore):
    metric_op = "memory"

    def __init__(self, redis: Any, *, cluster: bool, **options: Any) -> None:
        super().__init__(redis, **options)
        self._target = {"target_nodes": "primaries"} if cluster else {}

    async def usage(self) -> MemoryUsage:
        reply = await self._run(self.redis.info("memory", **self._target))
        # A Cluster answers {node name: INFO dict} (one dict when it has a single primary).
        nodes = [reply] if "used_memory" in reply else list(reply.values())
        try:
            usages = [MemoryUsage(int(n["used_memory"]), int(n.get("maxmemory", 0)), str(n.get("maxmemory_policy", "")))
                      for n in nodes]
        except (KeyError, TypeError, ValueError) as exc:  # not the INFO we know (a proxy, an emulation...)
            raise StoreUnavailable("unexpected INFO memory reply") from exc
        if not usages:
            raise StoreUnavailable("no Redis node answered INFO memory")
        return max(usages, key=lambda u: (u.used / u.max if u.max else 0.0, u.used))
