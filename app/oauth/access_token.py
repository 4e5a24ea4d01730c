"""JWT access tokens: RFC 9068 (profile), RFC 7515 compact serialization.

``TokenSigner`` signs with one broker key; its protected header is encoded once at start, so a
token costs one claims encode and one signature. ``verify_access_token`` (RFC 9068 §4
validation) lives in ``token_broker_jose.access_token``, the one implementation the admin API,
revocation, introspection and the resource-server library share; it is re-exported here.
"""

from __future__ import annotations

import base64
import json
import os
from typing import Any

import msgspec

from app.oauth.jose import b64url
from token_broker_jose.access_token import AT_TYP, InvalidToken, verification_keys_from_jwks, verify_access_token
from token_broker_jose.jose import ALGORITHMS, VerificationKey


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


_IDS: list[str] = []


def new_token_id() -> str:
    """128 random bits from the OS's random source, URL-safe base64 without padding (22
    characters; FAPI 2.0 §5.4.1 asks for at least that much entropy).

    Drawn 256 at a time (one ``getrandom`` call per 256 tokens instead of one each, as the request
    ids in ``app.log``); a forked child empties the pool it inherited, so no two processes ever
    hand out the same id."""
    try:
        return _IDS.pop()
    except IndexError:
        raw = os.urandom(16 * 256)
        _IDS.extend(base64.urlsafe_b64encode(raw[i:i + 16])[:22].decode() for i in range(0, len(raw), 16))
        return _IDS.pop()


def _empty_pool() -> None:
    _IDS.clear()  # never the parent's ids


os.register_at_fork(after_in_child=_empty_pool)


class TokenSigner:
    def __init__(self, key: Any, kid: str, alg: str) -> None:
        self.kid = kid
        self.alg = alg
        self._key = key
        self._algorithm = ALGORITHMS[alg]
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
