"""Requests about an issued token: revocation (RFC 7009 §2.1) and introspection (RFC 7662 §2.1, §2.2).

Both take the same form: ``token`` (required), ``token_type_hint`` (optional; the broker issues only
access tokens, and RFC 7009 §2.1 says to search every supported type whatever the hint, so it is
read and ignored) and the client's own authentication, checked exactly as at the token endpoint
(``client_auth_params``).
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.oauth.constants import CLIENT_ASSERTION_TYPE
from app.oauth.errors import InvalidRequest
from app.oauth.request import client_auth_params, parse_form

_KNOWN = frozenset({"token", "token_type_hint", "client_assertion_type", "client_assertion", "client_id"})


class TokenOpRequest(msgspec.Struct, frozen=True):
    token: str
    client_assertion: str
    client_id: str | None
    assertion_type: str = CLIENT_ASSERTION_TYPE


def parse_token_op_request(body: bytes, content_type: str | None, *, has_authorization: bool) -> TokenOpRequest:
    params = parse_form(body, content_type, _KNOWN)
    assertion, client_id, assertion_type = client_auth_params(params, has_authorization=has_authorization)
    token = params.get("token")
    if token is None:
        raise InvalidRequest("token_missing")
    return TokenOpRequest(token, assertion, client_id, assertion_type)


#: RFC 7662 §2.2: the whole answer for any token that is not active (revoked, expired, foreign,
#: malformed, or its client gone): nothing else, so the answer tells nothing about why.
INACTIVE = b'{"active":false}'


class IntrospectionResponse(msgspec.Struct, frozen=True, omit_defaults=True):
    """RFC 7662 §2.2 for an active broker token (claims as RFC 9068 §2.2 wrote them)."""

    active: bool
    scope: str
    client_id: str
    sub: str
    aud: str | list[str]
    iss: str
    exp: int
    jti: str
    token_type: str
    iat: int | None = None
    #: RFC 9449 §6.2: a DPoP-bound token's confirmation (``{"jkt": ...}``), as the token carries it.
    cnf: dict[str, str] | None = None


def introspection_response(claims: dict[str, Any]) -> bytes:
    """Claims already verified by ``verify_access_token``. A token with ``cnf.jkt`` is reported with
    it and ``token_type`` ``DPoP`` (RFC 9449 §6.2), so a resource server asks for the proof."""
    iat = claims.get("iat")
    cnf = claims.get("cnf")
    jkt = cnf.get("jkt") if isinstance(cnf, dict) else None
    bound = isinstance(jkt, str)
    return msgspec.json.encode(
        IntrospectionResponse(
            active=True,
            scope=claims["scope"],
            client_id=claims["client_id"],
            sub=claims["sub"],
            aud=claims["aud"],
            iss=claims["iss"],
            exp=int(claims["exp"]),
            jti=claims["jti"],
            token_type="DPoP" if bound else "Bearer",
            iat=None if iat is None else int(iat),
            cnf={"jkt": jkt} if bound else None,
        )
    )
