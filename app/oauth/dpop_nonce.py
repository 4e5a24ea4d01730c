"""Server-provided DPoP nonces (RFC 9449 §8), the same on every replica without a call per request.

Time is cut into windows of ``lifetime`` seconds; the nonce of window ``w`` is
base64url(HMAC-SHA256(secret, ``w`` as decimal ASCII)). The secret is random, created once in the
shared store and read by each replica (``app.service.dpop``), so any replica computes any other's
nonce. The current and the previous window's nonces are accepted: a nonce handed out just before a
window ends stays usable for at least one whole lifetime. A nonce tells nothing about the secret
or the time beyond its window, and cannot be made without the secret.
"""

from __future__ import annotations

import hashlib
import hmac

from app.oauth.jose import b64url


class NonceWindows:
    """The nonces of one secret; the last window computed is remembered (one HMAC per window)."""

    def __init__(self, secret: bytes, lifetime: int) -> None:
        self._secret = secret
        self._lifetime = lifetime
        self._window = -1
        self._current = self._previous = ""

    def _at(self, now: float) -> tuple[str, str]:
        window = int(now // self._lifetime)
        if window != self._window:
            self._current, self._previous, self._window = self._nonce(window), self._nonce(window - 1), window
        return self._current, self._previous

    def _nonce(self, window: int) -> str:
        return b64url(hmac.new(self._secret, str(window).encode("ascii"), hashlib.sha256).digest()).decode("ascii")

    def current(self, now: float) -> str:
        """The nonce to hand out (``DPoP-Nonce``)."""
        return self._at(now)[0]

    def accepts(self, nonce: str | None, now: float) -> bool:
        if nonce is None or not nonce.isascii():  # compare_digest takes ASCII strings only
            return False
        current, previous = self._at(now)
        return hmac.compare_digest(nonce, current) or hmac.compare_digest(nonce, previous)
