"""The token endpoint (RFC 6749 §4.4, RFC 7523 §3, RFC 9068), on the shared client-authentication
path (``app.service.client_auth``: parse, verify, record the jti, log, rate-limit, 503):

1. ``record``: decide scope and audience (``app.oauth.grant``), then one Lua script call
   (``TokenStore.consume_and_lookup``) records the jti (fails closed) and reads the issued-token
   cache entry for this grant (fails open); when a hit is unlikely, the token is signed before the
   call and the call stores it (``TokenCache.sign_ahead``). A refused grant is raised only after the jti is
   recorded: the client has authenticated and its assertion is spent. With a request quota set
   the same call counts the request first (``app.service.quota``): over it, 429 and nothing recorded;
2. ``answer``: the cached token if it is still fresh enough, else one signed once per cache key
   across replicas (``app.service.token_cache``).

DPoP (RFC 9449, docs/dpop.md): a request with a ``DPoP`` header is served through
``_ProofRequest``, which hands the header to ``record``. There the proof is checked
(``app.service.dpop``) after client authentication and before the store call: an unauthenticated
caller only ever gets ``invalid_client`` (a DPoP answer would tell it nothing useful, and it costs
the broker no proof signature work), and a bad proof writes nothing to Redis (the assertion is not
spent, the client may retry with a good proof). The proof's jti is recorded in the same script
call as the assertion's; the token carries ``cnf.jkt`` and is cached under an id that includes the
thumbprint. A client registered with ``dpop_bound_access_tokens`` gets ``invalid_dpop_proof``
without a proof, before anything is recorded.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec

from app import tracing
from app.config import Settings
from app.oauth.access_token import TokenSigner
from app.oauth.assertion import jti_hash
from app.oauth.dpop import TOKEN_TYPE, proof_replayed, proof_required
from app.oauth.errors import OAuthError
from app.oauth.federation import log_sub
from app.oauth.grant import Grant, decide_grant
from app.oauth.request import TokenRequest, parse_token_request
from app.service.client_auth import Authenticated, ClientAuthenticator, EndpointRequest
from app.service.dpop import ProofChecker
from app.service.quota import over_quota
from app.service.token_cache import SignedAhead, TokenCache
from app.store.base import CacheLookup, ProofRecord, QuotaExceeded, TokenStore


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
    #: The DPoP proof key's thumbprint: the token is bound to it (``cnf.jkt``); None for bearer.
    jkt: str | None = None
    #: The token signed before the lookup (``TokenCache.sign_ahead``), if any.
    ahead: SignedAhead | None = None

    @property
    def reused(self) -> bool:
        return self.lookup.reused


_encode = msgspec.json.Encoder().encode


class TokenService:
    event = "token"
    parse = staticmethod(parse_token_request)

    def __init__(self, settings: Settings, *, authenticator: ClientAuthenticator, tokens: TokenStore,
                 cache: TokenCache, signer: Callable[[], TokenSigner], proofs: ProofChecker, log: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self._lifetime = settings.token_lifetime
        self.proofs = proofs
        self._clock = clock
        self._auth = authenticator
        self._tokens = tokens
        self._cache = cache
        self._signer = signer
        self._log = log

    def token(self, request: EndpointRequest) -> Coroutine[Any, Any, bytes]:
        """Await it for the JSON body of the answer (RFC 6749 §5.1); raises the ``OAuthError`` to
        answer with. (The authenticator's coroutine itself: no second frame on the hot path.)"""
        if request.dpop:
            return self._auth.run(_ProofRequest(self, request.dpop), request)
        return self._auth.run(self, request)

    def dpop_nonce(self) -> str | None:
        """The ``DPoP-Nonce`` of a successful DPoP answer (RFC 9449 §8); None when nonces are off."""
        return self.proofs.nonce(self._clock())

    async def record(self, auth: Authenticated, form: TokenRequest, request_id: str,
                     dpop: tuple[str, ...] = ()) -> _Lookup:
        proof = None
        if dpop:
            proof = await self.proofs.verify(dpop, self._clock())
        elif auth.client.record.dpop_bound_access_tokens:
            raise proof_required()
        jkt = None if proof is None else proof.jkt
        grant = denial = cache_id = None
        try:
            grant = decide_grant(auth.client, form.scope, form.resource, self._lifetime)
            if auth.federation is not None:  # the token names the workload (its ``federation`` claim)
                grant = msgspec.structs.replace(grant, federation=auth.federation)
        except OAuthError as exc:
            denial = exc
        signer = self._signer()  # once per request: the cache key and the token agree on the kid
        ahead = None
        if grant is not None:
            cache_id = self._cache.cache_id(grant, auth.client.record.version, signer, jkt)
            ahead = self._cache.sign_ahead(grant, signer, cache_id, self._clock(), jkt)
        try:
            lookup = await self._tokens.consume_and_lookup(
                auth.client_id, auth.assertion.jti, request_id, auth.replay_ttl_ms, cache_id, reuse=auth.reuse,
                proof=None if proof is None else ProofRecord(proof.jkt, proof.jti, self.proofs.policy.record_ttl_ms),
                new=None if ahead is None else ahead.new,
            )
        except QuotaExceeded as exc:  # nothing recorded: the assertion is not spent
            raise over_quota(exc) from None
        if lookup.proof_replayed:  # nothing recorded: the assertion is not spent
            raise proof_replayed()
        return _Lookup(lookup.first_use, lookup, grant, denial, signer, cache_id, jkt, ahead)

    async def answer(self, auth: Authenticated, form: TokenRequest, recorded: _Lookup, now: float,
                     request_id: str) -> bytes:
        if recorded.denial is not None:
            raise recorded.denial
        grant, cache_id = recorded.grant, recorded.cache_id
        assert grant is not None and cache_id is not None
        jkt = recorded.jkt
        entry, how = await self._cache.issue(grant, recorded.signer, cache_id, recorded.lookup, now, request_id, jkt,
                                             recorded.ahead)
        if tracing.on:
            tracing.cache(how)
        # Remaining life of the token actually served (RFC 6749 §5.1): never rounded up, and never
        # more than its lifetime even when it was minted by a replica whose clock runs ahead.
        expires_in = entry.exp - entry.iat if how == "mint" else max(1, min(int(entry.exp - now), entry.exp - entry.iat))
        # The one line per token served; a token signed for this request also names its own jti
        # (``at_jti_hash``, as ``token.revoked`` and ``introspection.active`` do): one hash, on misses only.
        minted = {"at_jti_hash": jti_hash(auth.client_id, entry.jti)} if how == "mint" else {}
        if auth.federation is not None:  # the workload behind a federated client (sub sanitised, truncated)
            minted.update(federated_iss=auth.federation.iss, federated_sub=log_sub(auth.federation.sub))
        if jkt is not None:
            minted["dpop_jkt"] = jkt
        self._log.info("token.issued", request_id=request_id, client_id=auth.client_id, jti_hash=auth.jti_hash,
                       scope=grant.scope, aud=grant.audience, cache=how, kid=recorded.signer.kid,
                       expires_in=expires_in, **minted)
        return _encode(TokenResponse(entry.access_token, "Bearer" if jkt is None else TOKEN_TYPE, expires_in,
                                     grant.scope))


class _ProofRequest:
    """The token endpoint for one request that carries ``DPoP`` headers: the service itself, with
    the headers handed to ``record`` (the authenticator's steps take no per-request extras)."""

    __slots__ = ("_service", "_dpop")
    event = TokenService.event
    parse = staticmethod(parse_token_request)

    def __init__(self, service: TokenService, dpop: tuple[str, ...]) -> None:
        self._service = service
        self._dpop = dpop

    def record(self, auth: Authenticated, form: TokenRequest, request_id: str) -> Coroutine[Any, Any, _Lookup]:
        return self._service.record(auth, form, request_id, self._dpop)

    def answer(self, auth: Authenticated, form: TokenRequest, recorded: _Lookup, now: float,
               request_id: str) -> Coroutine[Any, Any, bytes]:
        return self._service.answer(auth, form, recorded, now, request_id)
