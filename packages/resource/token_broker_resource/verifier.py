"""Access-token verification for resource servers: RFC 9068 §4 and RFC 6750 §3.1.

The JWT checks are ``token_broker_jose.access_token.verify_access_token``, the same function the broker
uses; this module adds where the keys come from (``keys.py``), the required-scope check (403
``insufficient_scope``), and optionally a revocation check through the broker's introspection
endpoint (RFC 7662). Authorisation is on ``client_id`` and ``scope``: a client-credentials token
names a client, never a user (RFC 9068 §5), so no "user" is derived from ``sub``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import httpx

from token_broker_jose.access_token import InvalidToken, verify_access_token
from token_broker_jose.constants import SIGNING_ALGS
from token_broker_resource.bearer import BearerError, insufficient_scope, invalid_token
from token_broker_resource.keys import BrokerKeys, VerifierUnavailable


@dataclass(frozen=True, slots=True)
class AccessToken:
    """A verified token: who the client is and what it may do."""

    client_id: str
    scopes: frozenset[str]
    jti: str
    expires_at: int
    claims: dict[str, Any]


class ResourceVerifier:
    """Verify Bearer tokens issued by ``issuer`` for this resource server (``audience``)."""

    def __init__(
        self,
        issuer: str,
        audience: str,
        *,
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        leeway: int = 10,
        algorithms: Iterable[str] = SIGNING_ALGS,
        jwks_max_age: float = 300.0,
        unknown_kid_cooldown: float = 30.0,
        timeout: float = 3.0,
        introspection: Any = None,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.leeway = leeway
        self._clock = clock
        self.keys = BrokerKeys(issuer, algorithms=algorithms, http=http, clock=clock, max_age=jwks_max_age,
                               cooldown=unknown_kid_cooldown, timeout=timeout)
        self.introspection = introspection

    async def verify(self, token: str, scopes: Iterable[str] = ()) -> AccessToken:
        """Return the verified token, or raise ``BearerError`` (401/403) or ``VerifierUnavailable``."""
        try:
            claims = self._check(token, await self.keys.current())
        except InvalidToken as exc:
            if exc.reason != "kid_unknown" or not await self.keys.refresh_for_unknown_kid():
                raise invalid_token(exc.reason) from None
            try:
                claims = self._check(token, await self.keys.current())
            except InvalidToken as again:
                raise invalid_token(again.reason) from None
        granted = frozenset(claims["scope"].split(" ")) - {""}
        needed = sorted(set(scopes))
        if not set(needed) <= granted:
            raise insufficient_scope(" ".join(needed))
        if self.introspection is not None and not await self.introspection.active(token):
            raise invalid_token("token_inactive")
        return AccessToken(claims["client_id"], granted, claims["jti"], int(claims["exp"]), claims)

    def _check(self, token: str, keys: Any) -> dict[str, Any]:
        return verify_access_token(token, keys, issuer=self.issuer, audience=self.audience, now=self._clock(), leeway=self.leeway)


__all__ = ["AccessToken", "BearerError", "ResourceVerifier", "VerifierUnavailable"]
