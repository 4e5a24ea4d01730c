"""JWT access tokens: RFC 9068 (profile), RFC 7515 compact serialization.

``TokenSigner`` signs with one broker key; its protected header is encoded once at start, so a
token costs one claims encode and one signature. ``verify_access_token`` is the single
implementation of RFC 9068 §4 validation, used by the admin API, revocation, introspection and
the resource-server library alike.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Mapping
from typing import Any

import msgspec
from joserfc.jws import JWSRegistry

from app.oauth.constants import ACCESS_TOKEN_MAX
from app.oauth.jose import Malformed, VerificationKey, b64decode, b64url, numeric_date, strict_object, verification_key

AT_TYP = "at+jwt"
_COMPACT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


class AccessTokenClaims(msgspec.Struct, frozen=True):
    iss: str
    sub: str
    client_id: str
    aud: str
    scope: str
    jti: str
    iat: int
    exp: int


class InvalidToken(Exception):
    """RFC 6750 §3.1 ``invalid_token``; ``reason`` is for logs only."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_token_id() -> str:
    """128 random bits (FAPI 2.0 §5.4.1 asks for at least that much entropy)."""
    return secrets.token_urlsafe(16)


class TokenSigner:
    def __init__(self, key: Any, kid: str, alg: str) -> None:
        self.kid = kid
        self.alg = alg
        self._key = key
        self._algorithm = JWSRegistry.algorithms[alg]
        self._algorithm.check_key(key)
        header = json.dumps({"alg": alg, "kid": kid, "typ": AT_TYP}, separators=(",", ":")).encode()
        self._prefix = b64url(header) + b"."

    def signing_input(self, claims: AccessTokenClaims) -> bytes:
        """Header and payload segments exactly as ``sign`` writes them (the cache re-checks with it)."""
        return self._prefix + b64url(msgspec.json.encode(claims))

    def sign(self, claims: AccessTokenClaims) -> str:
        signing_input = self.signing_input(claims)
        signature = self._algorithm.sign(signing_input, self._key)
        return (signing_input + b"." + b64url(signature)).decode("ascii")


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
        if alg not in JWSRegistry.algorithms or alg.startswith(("HS", "none")) or not isinstance(kid, str):
            continue
        if jwk.get("use", "sig") != "sig" or set(jwk) & {"d", "p", "q", "k"}:
            continue
        try:
            out[kid] = verification_key(jwk, kid=kid, alg=alg)
        except Exception:  # an unknown kty, or a key that does not fit its alg
            continue
    return out
