"""When to renew a cached access token: proactively, at a jittered point of its lifetime.

A token obtained at ``t`` with ``expires_in`` ``E`` is renewed from ``t + E * f``, where ``f`` is
drawn uniformly from ``[renew_at - jitter, renew_at + jitter]`` (inside 80-90% of the lifetime),
so replicas that got their tokens together do not all renew in the same second. Until it really
expires (minus a small margin), the old token is still served if the broker cannot be reached.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

#: Seconds before ``exp`` from which a cached token is no longer handed out at all.
EXPIRY_MARGIN = 2.0


@dataclass(frozen=True)
class CachedToken:
    """An access token as the client keeps it: times are seconds since the epoch."""

    access_token: str
    scope: str
    issued_at: float
    expires_at: float
    renew_at: float

    def fresh(self, now: float) -> bool:
        """Handed out without asking the broker (before the renewal point)."""
        return now < self.renew_at

    def usable(self, now: float) -> bool:
        """Still good enough to serve when renewal failed because the broker is unavailable."""
        return now < self.expires_at - EXPIRY_MARGIN


@dataclass(frozen=True)
class RenewalPolicy:
    """Renew from ``renew_at ± jitter`` of a token's lifetime; ``rng`` draws in [0, 1)."""

    renew_at: float = 0.85
    jitter: float = 0.05
    rng: Callable[[], float] = random.random

    def __post_init__(self) -> None:
        low, high = self.renew_at - self.jitter, self.renew_at + self.jitter
        if not (0 <= self.jitter and 0.8 - 1e-9 <= low and high <= 0.9 + 1e-9):
            raise ValueError("renewal must happen between 80% and 90% of the token lifetime: "
                             "need 0.8 <= renew_at - jitter and renew_at + jitter <= 0.9")

    def token(self, access_token: str, scope: str, issued_at: float, expires_in: float) -> CachedToken:
        """The token to cache, with its renewal point drawn now."""
        fraction = self.renew_at + self.jitter * (2 * self.rng() - 1)
        return CachedToken(access_token, scope, issued_at, issued_at + expires_in, issued_at + expires_in * fraction)
