"""The token endpoint (RFC 6749 §4.4, RFC 7523 §3, RFC 9068), on the shared client-authentication
path (``app.service.client_auth``: parse, verify, record the jti, log, rate-limit, 503):

1. ``record``: decide scope and audience (``app.oauth.grant``), then one Lua script call
   (``TokenStore.consume_and_lookup``) records the jti (fails closed) and reads the issued-token
   cache entry for this grant (fails open). A refused grant is raised only after the jti is
   recorded: the client has authenticated and its assertion is spent. With a request quota set
   the same call counts the request first (``app.service.quota``): over it, 429 and nothing recorded;
2. ``answer``: the cached token if it is still fresh enough, else one signed once per cache key
   across replicas (``app.service.token_cache``).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from app import tracing
from app.config import Settings
from app.oauth.access_token import TokenSigner
from app.oauth.assertion import jti_hash
from app.oauth.errors import OAuthError
from app.oauth.grant import Grant, decide_grant
from app.oauth.request import TokenRequest, parse_token_request
from app.service.client_auth import Authenticated, ClientAuthenticator, EndpointRequest
from app.service.quota import over_quota
from app.service.token_cache import TokenCache
from app.store.base import CacheLookup, QuotaExceeded, TokenStore


class TokenResponse(msgspec.Struct, frozen=True):
    """RFC 6749 §5.1."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str


class _Lookup(msgspec.Struct, frozen=True):
    """What ``record`` learnt: the script's answer, and the grant decision it was made for."""

    first_use: bool
    lookup: CacheLookup
    grant: Grant | None
    denial: OAuthError | None
    signer: TokenSigner
    cache_id: str | None

    @property
    def reused(self) -> bool:
        return self.lookup.reused


_encode = msgspec.json.Encoder().encode


class TokenService:
    event = "token"
    parse = staticmethod(parse_token_request)

    def __init__(self, settings: Settings, *, authenticator: ClientAuthenticator, tokens: TokenStore,
                 cache: TokenCache, signer: Callable[[], TokenSigner], log: Any) -> None:
        self._lifetime = settings.token_lifetime
        self._auth = authenticator
        self._tokens = tokens
        self._cache = cache
        self._signer = signer
        self._log = log

    def token(self, request: EndpointRequest) -> Coroutine[Any, Any, bytes]:
        """Await it for the JSON body of the answer (RFC 6749 §5.1); raises the ``OAuthError`` to
        answer with. (The authenticator's coroutine itself: no second frame on the hot path.)"""
        return self._auth.run(self, request)

    async def record(self, auth: Authenticated, form: TokenRequest, request_id: str) -> _Lookup:
        grant = denial = cache_id = None
        try:
            grant = decide_grant(auth.client, form.scope, form.resource, self._lifetime)
        except OAuthError as exc:
            denial = exc
        signer = self._signer()  # once per request: the cache key and the token agree on the kid
        if grant is not None:
            cache_id = self._cache.cache_id(grant, auth.client.record.version, signer)
        try:
            lookup = await self._tokens.consume_and_lookup(
                auth.client_id, auth.assertion.jti, request_id, auth.replay_ttl_ms, cache_id, reuse=auth.reuse
            )
        except QuotaExceeded as exc:  # nothing recorded: the assertion is not spent
            raise over_quota(exc) from None
        return _Lookup(lookup.first_use, lookup, grant, denial, signer, cache_id)

    async def answer(self, auth: Authenticated, form: TokenRequest, recorded: _Lookup, now: float,
                     request_id: str) -> bytes:
        if recorded.denial is not None:
            raise recorded.denial
        grant, cache_id = recorded.grant, recorded.cache_id
        assert grant is not None and cache_id is not None
        entry, how = await self._cache.issue(grant, recorded.signer, cache_id, recorded.lookup, now, request_id)
        if tracing.on:
            tracing.cache(how)
        # Remaining life of the token actually served (RFC 6749 §5.1): never rounded up, and never
        # more than its lifetime even when it was minted by a replica whose clock runs ahead.
        expires_in = entry.exp - entry.iat if how == "mint" else max(1, min(int(entry.exp - now), entry.exp - entry.iat))
        # The one line per token served; a token signed for this request also names its own jti
        # (``at_jti_hash``, as ``token.revoked`` and ``introspection.active`` do): one hash, on misses only.
        minted = {"at_jti_hash": jti_hash(auth.client_id, entry.jti)} if how == "mint" else {}
        self._log.info("token.issued", request_id=request_id, client_id=auth.client_id, jti_hash=auth.jti_hash,
                       scope=grant.scope, aud=grant.audience, cache=how, kid=recorded.signer.kid,
                       expires_in=expires_in, **minted)
        return _encode(TokenResponse(entry.access_token, "Bearer", expires_in, grant.scope))
