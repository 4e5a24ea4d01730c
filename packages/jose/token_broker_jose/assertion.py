"""Client assertions: RFC 7523 §3 as updated by RFC 10070.

``aud`` is the broker's issuer identifier as a plain string, never the token endpoint URL;
``typ`` is ``client-authentication+jwt``; every assertion has a fresh 128-bit ``jti`` and a short
``exp``.
"""

from __future__ import annotations

import secrets
import time
from typing import Any

from joserfc import jwt

from token_broker_jose.constants import CLIENT_ASSERTION_TYPE

ASSERTION_TYP = "client-authentication+jwt"
#: ``client_assertion_type`` of a token request authenticated with a JWT (RFC 7523 §2.2).
ASSERTION_TYPE = CLIENT_ASSERTION_TYPE
#: The longest ``exp - iat`` this library signs, in seconds.
MAX_LIFETIME = 60


def make_client_assertion(
    key: Any,
    *,
    client_id: str,
    issuer: str,
    alg: str,
    kid: str | None = None,
    lifetime: int = MAX_LIFETIME,
    now: float | None = None,
) -> str:
    """A signed assertion for one token request; ``now`` defaults to the wall clock."""
    if not 1 <= lifetime <= MAX_LIFETIME:
        raise ValueError(f"assertion lifetime must be 1-{MAX_LIFETIME} seconds, not {lifetime!r}")
    issued = int(time.time() if now is None else now)
    header = {"alg": alg, "typ": ASSERTION_TYP}
    if kid is not None:
        header["kid"] = kid
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": issuer,
        "jti": secrets.token_urlsafe(16),
        "iat": issued,
        "exp": issued + lifetime,
    }
    return jwt.encode(header, claims, key, algorithms=[alg])
