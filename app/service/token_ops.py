"""What RFC 7009 revocation and RFC 7662 introspection share: the same form, the plain jti record
on the shared client-authentication path, and the check that a token is one this broker issued."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from app.config import Settings
from app.oauth.access_token import VerificationKey, verify_access_token
from app.oauth.token_ops import parse_token_op_request
from app.service.client_auth import ClientAuthenticator


class TokenOpEndpoint:
    #: Prefix of the endpoint's log events.
    event: str
    parse = staticmethod(parse_token_op_request)

    def __init__(self, settings: Settings, *, authenticator: ClientAuthenticator,
                 verification_keys: Callable[[], dict[str, VerificationKey]], log: Any) -> None:
        self._issuer = settings.issuer
        self._auth = authenticator
        self.record = authenticator.first_use
        self._keys = verification_keys
        self._log = log

    def _claims(self, token: str, now: float) -> dict[str, Any]:
        """The claims of an unexpired token signed by one of the published keys (``InvalidToken`` otherwise)."""
        return verify_access_token(token, self._keys(), issuer=self._issuer, audience=None, now=now, leeway=0)
