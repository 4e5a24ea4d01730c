"""Token revocation: RFC 7009 §2.

The caller authenticates exactly as at the token endpoint (``app.service.client_auth``:
private_key_jwt, jti recorded). The token must be one this broker signed (any of its published
keys) and not yet expired; otherwise there is nothing to revoke. A client revokes only its own
tokens: for another client's token the answer is the same 200 and nothing happens (§2.2: invalid
tokens do not cause an error). A revoked token's jti is kept until the token expires, and the
cache entry holding it is deleted, so it is never served again and introspection reports it
inactive.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.oauth.access_token import InvalidToken, VerificationKey
from app.oauth.assertion import jti_hash
from app.oauth.token_ops import TokenOpRequest
from app.service.client_auth import Authenticated, ClientAuthenticator, EndpointRequest, FirstUse
from app.service.token_cache import TokenCache
from app.service.token_ops import TokenOpEndpoint


class RevocationService(TokenOpEndpoint):
    event = "revocation"

    def __init__(self, settings: Settings, *, authenticator: ClientAuthenticator, cache: TokenCache,
                 verification_keys: Callable[[], dict[str, VerificationKey]], log: Any) -> None:
        super().__init__(settings, authenticator=authenticator, verification_keys=verification_keys, log=log)
        self._cache = cache

    async def revoke(self, request: EndpointRequest) -> None:
        """Raises the ``OAuthError`` to answer with; returning means 200 with an empty body."""
        await self._auth.run(self, request)

    async def answer(self, caller: Authenticated, form: TokenOpRequest, recorded: FirstUse, now: float,
                     request_id: str) -> None:
        client_id = caller.client_id
        try:
            claims = self._claims(form.token, now)
        except InvalidToken as exc:
            self._log.info("revocation.ignored", request_id=request_id, client_id=client_id, reason=exc.reason)
            return
        at_jti_hash = jti_hash(claims["client_id"], claims["jti"])
        if claims["client_id"] != client_id:
            self._log.warning("revocation.foreign_token", request_id=request_id, client_id=client_id,
                              token_client_id=claims["client_id"], at_jti_hash=at_jti_hash)
            return
        ttl_ms = max(1, int((claims["exp"] - now) * 1000))
        await self._cache.revoked(client_id, claims["jti"], ttl_ms)  # no answer: 503 (client_auth)
        self._log.info("token.revoked", request_id=request_id, client_id=client_id, at_jti_hash=at_jti_hash,
                       exp=int(claims["exp"]))
