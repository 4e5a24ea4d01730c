"""Token introspection: RFC 7662 §2.

The caller authenticates exactly as at the token endpoint (private_key_jwt, jti consumed) and
must be allowed to introspect: its registration lists the scope ``broker:introspect`` (403
``access_denied`` otherwise). Any broker-issued token may be introspected (a resource server asks
about its callers' tokens). The answer is ``{"active": false}`` and nothing more for a token that
is malformed, not signed by one of the broker's keys, from another issuer, expired, revoked, or
whose client is unknown or disabled; otherwise the token's claims (§2.2).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.oauth.assertion import jti_hash
from app.oauth.access_token import InvalidToken, VerificationKey, verify_access_token
from app.oauth.errors import AccessDenied, TemporarilyUnavailable
from app.oauth.token_ops import INACTIVE, introspection_response
from app.service.client_auth import ClientAuthenticator
from app.service.directory import ClientDirectory
from app.service.revocation import authenticate_op
from app.store.base import StoreUnavailable, TokenStore

INTROSPECT_SCOPE = "broker:introspect"


class IntrospectionService:
    def __init__(self, settings: Settings, *, authenticator: ClientAuthenticator, directory: ClientDirectory,
                 tokens: TokenStore, verification_keys: Callable[[], dict[str, VerificationKey]], log: Any,
                 clock: Callable[[], float] = time.time) -> None:
        self._settings = settings
        self._auth = authenticator
        self._directory = directory
        self._tokens = tokens
        self._keys = verification_keys
        self._log = log
        self._clock = clock

    async def introspect(self, body: bytes, content_type: str | None, *, has_authorization: bool, request_id: str,
                         source: str | None = None) -> bytes:
        caller, token = await authenticate_op(self._auth, self._log, "introspection", body, content_type,
                                              has_authorization, request_id, source, self._settings.retry_after)
        caller_id = caller.client_id
        if INTROSPECT_SCOPE not in caller.client.scopes:
            self._log.info("introspection.rejected", request_id=request_id, client_id=caller_id,
                           error="access_denied", reason="introspect_not_allowed")
            raise AccessDenied("introspect_not_allowed")
        now = self._clock()
        try:
            claims = verify_access_token(token, self._keys(), issuer=self._settings.issuer, audience=None, now=now, leeway=0)
            owner = await self._directory.get(claims["client_id"])
            if owner is None or not owner.record.enabled:
                raise InvalidToken("client_gone")
            if await self._tokens.is_revoked(claims["client_id"], claims["jti"]):
                raise InvalidToken("token_revoked")
        except InvalidToken as exc:
            self._log.info("introspection.inactive", request_id=request_id, client_id=caller_id, reason=exc.reason)
            return INACTIVE
        except StoreUnavailable as exc:  # cannot tell whether it is revoked: no answer rather than a wrong one
            self._log.error("introspection.store_unavailable", request_id=request_id, client_id=caller_id, error=str(exc))
            raise TemporarilyUnavailable("store_unavailable", headers={"Retry-After": str(self._settings.retry_after)}) from None
        self._log.info("introspection.active", request_id=request_id, client_id=caller_id,
                       token_client_id=claims["client_id"], at_jti_hash=jti_hash(claims["client_id"], claims["jti"]))
        return introspection_response(claims)
