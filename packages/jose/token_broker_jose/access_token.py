"""RFC 9068 access-token verification: the one implementation the broker and resource servers share.

``verify_access_token`` is RFC 9068 §4 validation, used by the broker's admin API, revocation and
introspection and by the resource-server library alike; ``verification_keys_from_jwks`` builds its
key map from a published JWKS. Signing stays in the broker (``app.oauth.access_token``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from token_broker_jose.constants import ACCESS_TOKEN_MAX
from token_broker_jose.jose import (
    ALGORITHMS,
    Malformed,
    VerificationKey,
    b64decode,
    numeric_date,
    strict_object,
    verification_key,
)

AT_TYP = "at+jwt"
_COMPACT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class InvalidToken(Exception):
    """RFC 6750 §3.1 ``invalid_token``; ``reason`` is for logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def verify_access_token(
    token: str,
    keys: Mapping[str, VerificationKey],
    *,
    issuer: str,
    audience: str | None,
    now: float,
    leeway: int = 10,
) -> dict[str, Any]:
    """RFC 9068 §4: typ, signature by a broker key, iss, aud, exp/nbf; returns the claims.

    An ``audience`` of None skips the audience check (introspection, which answers for any
    resource). Required-scope checks belong to the caller (they give 403, not 401).
    """
    if len(token) > ACCESS_TOKEN_MAX or not token.isascii() or not _COMPACT.fullmatch(raw := token.encode()):
        raise InvalidToken("token_malformed")
    h64, p64, s64 = raw.split(b".")
    try:
        header = strict_object(h64, "header_invalid")
        claims = strict_object(p64, "claims_invalid")
    except Malformed as exc:
        raise InvalidToken(exc.reason) from None
    typ = header.get("typ")
    if type(typ) is not str or typ.lower() not in ("at+jwt", "application/at+jwt"):
        raise InvalidToken("typ_invalid")
    if set(header) - {"alg", "kid", "typ"}:
        raise InvalidToken("header_param_forbidden")
    key = keys.get(header.get("kid")) if type(header.get("kid")) is str else None
    if key is None:
        raise InvalidToken("kid_unknown")
    if header.get("alg") != key.alg:
        raise InvalidToken("alg_not_allowed")
    signature = b64decode(s64)
    try:
        ok = signature is not None and key.verifier.verify(h64 + b"." + p64, signature, key.key)
    except Exception:
        ok = False
    if not ok:
        raise InvalidToken("signature_invalid")

    if claims.get("iss") != issuer:
        raise InvalidToken("iss_invalid")
    if audience is not None:
        aud = claims.get("aud")
        if not (aud == audience or (type(aud) is list and audience in aud and all(type(a) is str for a in aud))):
            raise InvalidToken("aud_invalid")
    for name in ("sub", "client_id", "jti", "scope"):
        if type(claims.get(name)) is not str:
            raise InvalidToken(f"{name}_invalid")
    try:
        exp = numeric_date(claims.get("exp"), "exp_invalid")
        if exp <= now - leeway:
            raise InvalidToken("token_expired")
        if claims.get("nbf") is not None and numeric_date(claims["nbf"], "nbf_invalid") > now + leeway:
            raise InvalidToken("nbf_in_future")
        if claims.get("iat") is not None and numeric_date(claims["iat"], "iat_invalid") > now + leeway:
            raise InvalidToken("iat_in_future")
    except Malformed as exc:
        raise InvalidToken(exc.reason) from None
    return claims


def verification_keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, VerificationKey]:
    """Build the verifier's key map from a published JWKS; keys without kid or a known alg are skipped."""
    out: dict[str, VerificationKey] = {}
    for jwk in jwks.get("keys", ()):
        if not isinstance(jwk, dict):
            continue
        alg, kid = jwk.get("alg"), jwk.get("kid")
        if alg not in ALGORITHMS or alg.startswith(("HS", "none")) or not isinstance(kid, str):
            continue
        if jwk.get("use", "sig") != "sig" or set(jwk) & {"d", "p", "q", "k"}:
            continue
        try:
            out[kid] = verification_key(jwk, kid=kid, alg=alg)
        except Exception:  # an unknown kty, or a key that does not fit its alg
            continue
    return out
