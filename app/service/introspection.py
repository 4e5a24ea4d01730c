"""Token introspection: RFC 7662 §2.

The caller authenticates exactly as at the token endpoint (``app.service.client_auth``:
private_key_jwt, jti recorded) and must be allowed to introspect: its registration lists the
scope ``broker:introspect`` (403 ``access_denied`` otherwise). Any broker-issued token may be
introspected (a resource server asks about its callers' tokens). The answer is
``{"active": false}`` and nothing more for a token that is malformed, not signed by one of the
broker's keys, from another issuer, expired, revoked, or whose client is unknown or disabled,
or issued to an earlier registration of its client_id (deleted since, then registered again);
otherwise the token's claims (§2.2), and for a DPoP-bound token its ``cnf`` and ``token_type``
``DPoP`` (RFC 9449 §6.2; ``app.oauth.token_ops``). When the store cannot tell whether the token is revoked, the
answer is 503 (no answer rather than a wrong one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.oauth.access_token import InvalidToken, VerificationKey
from app.oauth.assertion import jti_hash
from app.oauth.clients import jti_registration
from app.oauth.constants import INTROSPECT_SCOPE
from app.oauth.errors import AccessDenied
from app.oauth.token_ops import INACTIVE, TokenOpRequest, introspection_response
from app.service.client_auth import Authenticated, ClientAuthenticator, EndpointRequest, FirstUse
from app.service.directory import ClientDirectory
from app.service.token_ops import TokenOpEndpoint
from app.store.base import TokenStore


class IntrospectionService(TokenOpEndpoint):
    event = "introspection"

    def __init__(self, settings: Settings, *, authenticator: ClientAuthenticator, directory: ClientDirectory,
                 tokens: TokenStore, verification_keys: Callable[[], dict[str, VerificationKey]], log: Any) -> None:
        super().__init__(settings, authenticator=authenticator, verification_keys=verification_keys, log=log)
        self._directory = directory
        self._tokens = tokens

    async def introspect(self, request: EndpointRequest) -> bytes:
        """The JSON body of the answer; raises the ``OAuthError`` to answer with."""
        return await self._auth.run(self, request)

    async def answer(self, caller: Authenticated, form: TokenOpRequest, recorded: FirstUse, now: float,
                     request_id: str) -> bytes:
        if INTROSPECT_SCOPE not in caller.client.scopes:
            raise AccessDenied("introspect_not_allowed")
        try:
            claims = self._claims(form.token, now)
            owner = await self._directory.get(claims["client_id"])
            if owner is None or not owner.record.enabled:
                raise InvalidToken("client_gone")
            # A client_id deleted and registered again is another registration: its predecessor's
            # tokens stay inactive (the jti names the registration, app.oauth.clients).
            if jti_registration(claims["jti"]) != owner.record.registration_id:
                raise InvalidToken("registration_gone")
            if await self._tokens.is_revoked(claims["client_id"], claims["jti"]):
                raise InvalidToken("token_revoked")
        except InvalidToken as exc:
            self._log.info("introspection.inactive", request_id=request_id, client_id=caller.client_id, reason=exc.reason)
            return INACTIVE
        self._log.info("introspection.active", request_id=request_id, client_id=caller.client_id,
                       token_client_id=claims["client_id"], at_jti_hash=jti_hash(claims["client_id"], claims["jti"]))
        return introspection_response(claims)
