"""The token endpoint's steps, in order (RFC 6749 §4.4, RFC 7523 §3, RFC 9068):

1. parse the form (``app.oauth.request``);
2. parse the assertion and find the client it names (``app.oauth.assertion``, directory);
3. verify the assertion against that client's keys and the claim rules;
4. decide scope and audience (``app.oauth.grant``); a refusal here is raised only after step 5,
   because the client has authenticated and its assertion is spent;
5. record the jti: one atomic ``SET NX PX GET`` (fails closed: no answer → 503);
6. sign the access token and answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import msgspec

from app.config import Settings
from app.oauth.access_token import AccessTokenClaims, TokenSigner, new_token_id
from app.oauth.assertion import AssertionPolicy, parse_assertion, verify_assertion
from app.oauth.errors import InvalidClient, OAuthError, TemporarilyUnavailable
from app.oauth.grant import Grant, decide_grant
from app.oauth.request import parse_token_request
from app.service.directory import ClientDirectory
from app.store.base import ReplayGuard, StoreUnavailable
from app.logging import jti_fingerprint


class TokenResponse(msgspec.Struct, frozen=True):
    """RFC 6749 §5.1."""

    access_token: str
    token_type: str
    expires_in: int
    scope: str


_encode = msgspec.json.Encoder().encode


def assertion_policy(settings: Settings) -> AssertionPolicy:
    return AssertionPolicy(
        issuer=settings.issuer,
        algs=frozenset(settings.assertion_algs),
        leeway=settings.leeway,
        max_lifetime=settings.assertion_max_lifetime,
        max_age=settings.assertion_max_age,
        jti_max_length=settings.jti_max_length,
        assertion_max=settings.assertion_max,
        allow_single_element_aud_array=settings.allow_single_element_aud_array,
    )


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
    ) -> None:
        self._settings = settings
        self._policy = assertion_policy(settings)
        self._directory = directory
        self._replay = replay
        self._signer = signer
        self._log = log
        self._clock = clock
        # Replay records outlive the assertion by leeway + skew, never less than 1 s.
        self._ttl_pad = settings.leeway + settings.clock_skew
        self._ttl_max = settings.assertion_max_lifetime + self._ttl_pad

    async def token(self, body: bytes, content_type: str | None, *, has_authorization: bool, request_id: str) -> bytes:
        client_id: str | None = None
        jti_hash: str | None = None
        try:
            now = self._clock()
            request = parse_token_request(body, content_type, has_authorization=has_authorization)
            parsed = parse_assertion(request.client_assertion, self._policy)
            client_id = parsed.client_id
            if request.client_id is not None and request.client_id != client_id:
                raise InvalidClient("client_id_mismatch")
            client = await self._directory.get(client_id)
            if client is None:
                raise InvalidClient("client_unknown")
            if not client.record.enabled:
                raise InvalidClient("client_disabled")
            verified = verify_assertion(parsed, client, self._policy, now)
            jti_hash = jti_fingerprint(client_id, verified.jti)

            denial: OAuthError | None = None
            grant: Grant | None = None
            try:
                grant = decide_grant(client, request.scope, request.resource, self._settings.token_lifetime)
            except OAuthError as exc:
                denial = exc

            ttl = min(max(verified.exp + self._ttl_pad - now, 1.0), self._ttl_max)
            if not await self._replay.first_use(client_id, verified.jti, request_id, int(ttl * 1000)):
                self._log.warning("replay.rejected", request_id=request_id, client_id=client_id, jti_hash=jti_hash, reason="jti_replayed")
                raise InvalidClient("jti_replayed")
            if denial is not None:
                raise denial
            assert grant is not None
            body_out = self._issue(grant, int(now))
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
            raise
        self._log.info("token.issued", request_id=request_id, client_id=client_id, jti_hash=jti_hash, scope=grant.scope, aud=grant.audience)
        return body_out

    def _issue(self, grant: Grant, now: int) -> bytes:
        signer = self._signer()
        claims = AccessTokenClaims(
            iss=self._settings.issuer,
            sub=grant.client_id,
            client_id=grant.client_id,
            aud=grant.audience,
            scope=grant.scope,
            jti=new_token_id(),
            iat=now,
            exp=now + grant.lifetime,
        )
        return _encode(TokenResponse(signer.sign(claims), "Bearer", grant.lifetime, grant.scope))
