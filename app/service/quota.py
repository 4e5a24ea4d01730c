"""The per-client request quota: at most ``BROKER_CLIENT_QUOTA`` recorded client assertions per
client per ``BROKER_CLIENT_QUOTA_WINDOW`` seconds, shared by every replica.

It bounds what one client can make Redis hold: every accepted assertion leaves a replay record
for up to the assertion lifetime cap + leeway + skew, whether or not the token came from the
cache. The count happens in the one script call that records the jti (``app.store.token_cache``),
so it costs no extra round trip. Over the quota the answer is the rate limiter's 429
``slow_down`` with ``Retry-After`` (seconds left in the window), logged with reason
``quota_exceeded``; the assertion is not spent and may be sent again once the window has ended.
Every endpoint that records a client's jti counts: /token (also when the grant is refused: that
jti is recorded too), /revoke and /introspect.
"""

from __future__ import annotations

import math

from app.oauth.errors import SlowDown
from app.store.base import CacheLookup, QuotaExceeded, TokenStore, reuse_verdict


def over_quota(exc: QuotaExceeded) -> SlowDown:
    return SlowDown("quota_exceeded", headers={"Retry-After": str(max(1, math.ceil(exc.retry_after_ms / 1000)))})


class CountedReplayGuard:
    """The ``ReplayGuard`` of /revoke and /introspect when a quota is set: their jti record is the
    token endpoint's counted script call without the cache read."""

    def __init__(self, tokens: TokenStore) -> None:
        self._tokens = tokens

    async def first_use(self, client_id: str, jti: str, request_id: str, ttl_ms: int) -> bool:
        return (await self._counted(client_id, jti, request_id, ttl_ms, None)).first_use

    async def record_reusable(self, client_id: str, jti: str, request_id: str, ttl_ms: int, digest: str) -> str:
        return reuse_verdict(await self._counted(client_id, jti, request_id, ttl_ms, digest))

    async def _counted(self, client_id: str, jti: str, request_id: str, ttl_ms: int, reuse: str | None) -> CacheLookup:
        try:
            return await self._tokens.consume_and_lookup(client_id, jti, request_id, ttl_ms, None, reuse=reuse)
        except QuotaExceeded as exc:
            raise over_quota(exc) from None
