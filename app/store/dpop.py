"""Redis implementation of ``NonceSecretStore``: the DPoP nonce secret (``app.oauth.dpop_nonce``)."""

from __future__ import annotations

from app.store import keyspace
from app.store.redis import RedisStore


class RedisNonceSecret(RedisStore):
    metric_op = "dpop_nonce"

    async def nonce_secret(self, candidate: bytes) -> bytes:
        # SET NX GET (Redis >= 7.0): one atomic command; the first replica's candidate is kept for
        # good (no expiry: nonces rotate by window, the secret need not), every other one reads it.
        previous = await self._run(self.redis.set(keyspace.DPOP_NONCE_SECRET, candidate, nx=True, get=True))
        return candidate if previous is None else bytes(previous)
