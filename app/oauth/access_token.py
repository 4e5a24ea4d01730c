"""JWT access tokens: RFC 9068 (profile), RFC 7515 compact serialization.

``TokenSigner`` signs with one broker key; its protected header is encoded once at start, so a
token costs one claims encode and one signature. ``verify_access_token`` (RFC 9068 §4
validation) lives in ``token_broker_jose.access_token``, the one implementation the admin API,
revocation, introspection and the resource-server library share; it is re-exported here.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

import msgspec
from joserfc.jws import JWSRegistry

from app.oauth.jose import b64url
from token_broker_jose.access_token import AT_TYP, InvalidToken, verification_keys_from_jwks, verify_access_token
from token_broker_jose.jose import VerificationKey


class FederatedIdentity(msgspec.Struct, frozen=True):
    """The workload a federated client's platform token was issued to (workload identity
    federation, ``app.oauth.federation``): its trusted issuer and its ``sub``. An access token
    carries it as its ``federation`` claim."""

    iss: str
    sub: str


class Confirmation(msgspec.Struct, frozen=True):
    """RFC 7800 ``cnf`` of a DPoP-bound token (RFC 9449 §6.1): the proof key's RFC 7638 thumbprint."""

    jkt: str


class AccessTokenClaims(msgspec.Struct, frozen=True, omit_defaults=True):
    iss: str
    sub: str
    client_id: str
    aud: str
    scope: str
    jti: str
    iat: int
    exp: int
    #: The workload whose platform token authenticated the client (workload identity federation):
    #: ``{"iss": ..., "sub": ...}``; absent otherwise, so every other token is unchanged byte for byte.
    federation: FederatedIdentity | None = None
    #: Last and left out when None, so a bearer token's payload is what it was before DPoP.
    cnf: Confirmation | None = None


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


__all__ = ["AT_TYP", "AccessTokenClaims", "Confirmation", "FederatedIdentity", "InvalidToken", "TokenSigner", "VerificationKey",
           "new_token_id", "verification_keys_from_jwks",
           "verify_access_token"]
