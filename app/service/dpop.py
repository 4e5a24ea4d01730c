"""DPoP at the token endpoint (RFC 9449 §4.3, §8): the proof check that runs once the client has
authenticated, before the one store call that records the proof's jti (``app.service.token``).

Server nonces (``BROKER_DPOP_NONCE``): every replica derives them from one secret
(``app.oauth.dpop_nonce``), read from the store at start and kept in the process, so checking a
nonce costs no Redis call. When the secret is not known yet (the store did not answer at start)
the first request that needs it reads it; no answer then is 503 (fails closed, as the replay
record does). A nonce the cached secret does not accept makes the replica read the secret again,
at most once a second (after the store lost it, the first replica to ask set a new one; the
others follow on their first refusal), then the answer is 400 ``use_dpop_nonce`` with the
current nonce in ``DPoP-Nonce``.
"""

from __future__ import annotations

import math
import secrets
import time
from typing import Any

from app.config import Settings
from app.oauth.dpop import NONCE_HEADER, DPoPProof, proof_policy, verify_token_proof
from app.oauth.dpop_nonce import NonceWindows
from app.oauth.errors import UseDPoPNonce
from app.store.base import NonceSecretStore, StoreUnavailable

#: Least time (s, monotonic) between two reads of the secret prompted by refused nonces.
_RELOAD_COOLDOWN = 1.0


class ProofChecker:
    def __init__(self, settings: Settings, *, secrets_store: NonceSecretStore, log: Any) -> None:
        self.policy = proof_policy(settings)
        self.nonces_on = settings.dpop_nonce
        self._lifetime = settings.dpop_nonce_lifetime
        self._store = secrets_store
        self._log = log
        self._windows: NonceWindows | None = None
        self._secret = b""
        self._read_at = -math.inf

    async def verify(self, headers: tuple[str, ...], now: float) -> DPoPProof:
        """The request's proof, checked (and its nonce when nonces are on); raises the OAuth error."""
        proof = verify_token_proof(headers, self.policy, now)
        if self.nonces_on:
            await self._check_nonce(proof.nonce, now)
        return proof

    def nonce(self, now: float) -> str | None:
        """The current nonce for a ``DPoP-Nonce`` header; None when nonces are off or not known yet."""
        return None if self._windows is None else self._windows.current(now)

    async def preload(self) -> None:
        """At start: read (or create) the secret; without an answer, the first request reads it."""
        if not self.nonces_on:
            return
        try:
            await self._load()
        except StoreUnavailable as exc:
            self._log.warning("dpop.nonce_secret_unavailable", error=str(exc))

    async def _check_nonce(self, nonce: str | None, now: float) -> None:
        windows = self._windows
        if windows is None:  # StoreUnavailable: 503 (app.service.client_auth)
            windows = await self._load()
        elif nonce is not None and not windows.accepts(nonce, now) and time.monotonic() - self._read_at >= _RELOAD_COOLDOWN:
            windows = await self._load()
        if not windows.accepts(nonce, now):
            raise UseDPoPNonce("dpop_nonce_required" if nonce is None else "dpop_nonce_stale",
                               headers={NONCE_HEADER: windows.current(now)},
                               description=None if nonce is None else
                               "The DPoP proof's nonce is not current: retry with the DPoP-Nonce header's value.")

    async def _load(self) -> NonceWindows:
        self._read_at = time.monotonic()
        secret = await self._store.nonce_secret(secrets.token_bytes(32))
        if self._windows is None or secret != self._secret:
            if self._windows is not None:
                self._log.warning("dpop.nonce_secret_changed")
            self._secret, self._windows = secret, NonceWindows(secret, self._lifetime)
        return self._windows
