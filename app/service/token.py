"""The token endpoint's steps, in order (RFC 6749 §4.4, RFC 7523 §3, RFC 9068):

1. parse the form (``app.oauth.request``);
2. authenticate the client: parse and verify its assertion (``app.service.client_auth``, the path
   shared with revocation and introspection);
3. decide scope and audience (``app.oauth.grant``); a refusal here is raised only after step 4,
   because the client has authenticated and its assertion is spent;
4. one pipelined Redis round trip: record the jti (``SET NX PX GET``; fails closed: no answer →
   503) and read the issued-token cache entry for this grant (fails open);
5. answer with the cached token if it is still fresh enough, else sign one (once per key across
   replicas, ``app.service.token_cache``) and answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from app.config import Settings
from app.metrics import Metrics
from app.oauth.access_token import TokenSigner
from app.oauth.errors import InvalidClient, OAuthError, TemporarilyUnavailable
from app.oauth.grant import Grant, decide_grant
from app.oauth.request import parse_token_request
from app.service.client_auth import ClientAuthenticator, assertion_policy
from app.service.directory import ClientDirectory
from app.service.ratelimit import FailureLimiter
from app.service.token_cache import TokenCache
from app.store.base import ReplayGuard, StoreUnavailable, TokenStore

__all__ = ["TokenResponse", "TokenService", "assertion_policy"]


class TokenResponse(msgspec.Struct, frozen=True):
    """RFC 6749 §5.1."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str


_encode = msgspec.json.Encoder().encode


class TokenService:
    def __init__(
        self,
        settings: Settings,
        *,
        directory: ClientDirectory,
        replay: ReplayGuard,
        signer: Callable[[], TokenSigner],
        log: Any,
        clock: Callable[[], float] = time.time,
        limiter: FailureLimiter | None = None,
        tokens: TokenStore,
        metrics: Metrics | None = None,
        authenticator: ClientAuthenticator | None = None,
    ) -> None:
        self._settings = settings
        self._limiter = limiter
        self._auth = authenticator or ClientAuthenticator(
            settings, directory=directory, replay=replay, log=log, clock=clock, limiter=limiter
        )
        self._tokens = tokens
        self._cache = TokenCache(settings, store=tokens, metrics=metrics or Metrics(), log=log)
        self._signer = signer
        self._log = log
        self._clock = clock

    @property
    def authenticator(self) -> ClientAuthenticator:
        return self._auth

    @property
    def cache(self) -> TokenCache:
        return self._cache

    async def token(self, body: bytes, content_type: str | None, *, has_authorization: bool, request_id: str,
                    source: str | None = None) -> bytes:
        client_id: str | None = None
        jti_hash: str | None = None

        def named(cid: str) -> None:
            nonlocal client_id
            client_id = cid

        try:
            if self._limiter is not None:  # in-process table only: no I/O on the success path
                self._limiter.check_address(source)
            now = self._clock()
            request = parse_token_request(body, content_type, has_authorization=has_authorization)
            auth = await self._auth.verify(request.client_assertion, request.client_id, now, request_id, named)
            jti_hash = auth.jti_hash

            denial: OAuthError | None = None
            grant: Grant | None = None
            try:
                grant = decide_grant(auth.client, request.scope, request.resource, self._settings.token_lifetime)
            except OAuthError as exc:
                denial = exc

            signer = self._signer()  # once per request: the cache key and the token agree on the kid
            cache_id = None if grant is None else self._cache.cache_id(grant, auth.client.record.version, signer)
            lookup = await self._tokens.consume_and_lookup(
                auth.client_id, auth.assertion.jti, request_id, auth.replay_ttl_ms, cache_id
            )
            self._auth.check_first_use(lookup.first_use, auth, request_id)
            if denial is not None:
                raise denial
            assert grant is not None and cache_id is not None
            entry, how = await self._cache.issue(grant, signer, cache_id, lookup, now, request_id)
        except StoreUnavailable as exc:
            self._log.error("token.store_unavailable", request_id=request_id, client_id=client_id, error=str(exc))
            raise TemporarilyUnavailable("store_unavailable", headers={"Retry-After": str(self._settings.retry_after)}) from None
        except OAuthError as exc:
            self._log.info(
                "token.rejected",
                request_id=request_id,
                client_id=client_id,
                jti_hash=jti_hash,
                error=exc.error,
                reason=exc.reason,
            )
            if self._limiter is not None and isinstance(exc, InvalidClient):
                await self._limiter.failed(source, client_id, request_id)
            raise
        # Remaining life of the token actually served (RFC 6749 §5.1): never rounded up, and never
        # more than its lifetime even when it was minted by a replica whose clock runs ahead.
        expires_in = entry.exp - entry.iat if how == "mint" else max(1, min(int(entry.exp - now), entry.exp - entry.iat))
        self._log.info("token.issued", request_id=request_id, client_id=client_id, jti_hash=jti_hash,
                       scope=grant.scope, aud=grant.audience, cache=how, expires_in=expires_in)
        return _encode(TokenResponse(entry.access_token, "Bearer", expires_in, grant.scope))
