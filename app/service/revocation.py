"""Token revocation: RFC 7009 §2.

The caller authenticates exactly as at the token endpoint (private_key_jwt, jti consumed). The
token must be one this broker signed (any of its published keys) and not yet expired; otherwise
there is nothing to revoke. A client revokes only its own tokens: for another client's token the
answer is the same 200 and nothing happens (§2.2: invalid tokens do not cause an error). A
revoked token's jti is kept until the token expires, and the cache entry holding it is deleted,
so it is never served again and introspection reports it inactive.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.oauth.access_token import InvalidToken, VerificationKey, verify_access_token
from app.oauth.errors import InvalidClient, OAuthError, TemporarilyUnavailable
from app.oauth.token_ops import parse_token_op_request
from app.service.client_auth import Authenticated, ClientAuthenticator
from app.service.token_cache import TokenCache
from app.oauth.assertion import jti_hash
from app.store.base import StoreUnavailable


class RevocationService:
    def __init__(self, settings: Settings, *, authenticator: ClientAuthenticator, cache: TokenCache,
                 verification_keys: Callable[[], dict[str, VerificationKey]], log: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._auth = authenticator
        self._cache = cache
        self._keys = verification_keys
        self._log = log
        self._clock = clock

    async def revoke(self, body: bytes, content_type: str | None, *, has_authorization: bool, request_id: str,
                     source: str | None = None) -> None:
        caller, token = await authenticate_op(self._auth, self._log, "revocation", body, content_type,
                                              has_authorization, request_id, source, self._settings.retry_after)
        client_id = caller.client_id
        now = self._clock()
        try:
            claims = verify_access_token(token, self._keys(), issuer=self._settings.issuer, audience=None, now=now, leeway=0)
        except InvalidToken as exc:
            self._log.info("revocation.ignored", request_id=request_id, client_id=client_id, reason=exc.reason)
            return
        at_jti_hash = jti_hash(claims["client_id"], claims["jti"])
        if claims["client_id"] != client_id:
            self._log.warning("revocation.foreign_token", request_id=request_id, client_id=client_id,
                              token_client_id=claims["client_id"], at_jti_hash=at_jti_hash)
            return
        ttl_ms = max(1, int((claims["exp"] - now) * 1000))
        try:
            await self._cache.revoked(client_id, claims["jti"], ttl_ms)
        except StoreUnavailable as exc:
            self._log.error("revocation.store_unavailable", request_id=request_id, client_id=client_id, error=str(exc))
            raise TemporarilyUnavailable("store_unavailable", headers={"Retry-After": str(self._settings.retry_after)}) from None
        self._log.info("token.revoked", request_id=request_id, client_id=client_id, at_jti_hash=at_jti_hash,
                       exp=int(claims["exp"]))


async def authenticate_op(auth: ClientAuthenticator, log: Any, endpoint: str, body: bytes, content_type: str | None,
                          has_authorization: bool, request_id: str, source: str | None,
                          retry_after: int) -> tuple[Authenticated, str]:
    """Parse an RFC 7009 / RFC 7662 request and authenticate its client: (caller, token).

    Errors are logged as ``<endpoint>.rejected`` and raised; failed authentications count
    toward the same rate limits as at the token endpoint.
    """
    client_id: str | None = None

    def named(cid: str) -> None:
        nonlocal client_id
        client_id = cid

    try:
        if auth.limiter is not None:
            auth.limiter.check_address(source)
        request = parse_token_op_request(body, content_type, has_authorization=has_authorization)
        caller = await auth.authenticate(request.client_assertion, request.client_id, request_id, named)
        return caller, request.token
    except StoreUnavailable as exc:
        log.error(f"{endpoint}.store_unavailable", request_id=request_id, client_id=client_id, error=str(exc))
        raise TemporarilyUnavailable("store_unavailable", headers={"Retry-After": str(retry_after)}) from None
    except OAuthError as exc:
        log.info(f"{endpoint}.rejected", request_id=request_id, client_id=client_id, error=exc.error, reason=exc.reason)
        if auth.limiter is not None and isinstance(exc, InvalidClient):
            await auth.limiter.failed(source, client_id, request_id)
        raise
