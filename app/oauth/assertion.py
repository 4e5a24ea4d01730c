"""Client assertion verification: RFC 7523 §3 as updated by RFC 10070 (``aud`` = issuer only).

The steps, in order (``docs/security.md`` explains each):

1. syntax gate before any JSON: ASCII, exactly three base64url segments, size caps;
2. header: strict JSON object holding only ``alg``, ``kid``, ``typ`` (all strings), ``alg`` in the
   broker's allow-list, ``typ`` absent / ``JWT`` / ``client-authentication+jwt``;
3. payload: strict JSON object (duplicate members, NaN/Infinity refused); ``iss`` == ``sub`` names
   the client, which the caller then looks up (keys are only ever taken from that client);
4. claims: ``aud`` is the issuer string (a one-element array of it only when the deployment
   allows that; the token endpoint URL only inside the client's legacy window); ``exp`` required,
   not past, within the lifetime cap; ``iat`` not too old and not in the future; ``nbf`` honoured;
   ``jti`` a string of 1 to ``jti_max_length`` (default 256) characters;
5. signature with the client's key chosen by ``kid``, through joserfc's algorithm bound to that key.

Only then may the caller record the ``jti`` (replay step). Any failure is an ``InvalidClient``
with a precise ``reason`` for the log; every such error renders identically.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any

import msgspec

from app.oauth.clients import Client
from app.oauth.constants import ASSERTION_MAX, JTI_MAX_LENGTH
from app.oauth.errors import InvalidClient
from app.oauth.jose import Malformed, b64decode, clean, numeric_date, strict_object


def jti_hash(client_id: str, jti: str) -> str:
    """The one name for an assertion's jti outside the token itself: SHA-256 of ``[client_id, jti]``.

    Replay records are keyed by it and logs carry it instead of the jti (enough to correlate,
    useless to replay). A JSON array, not a concatenation: client ``ab`` + jti ``c`` and client
    ``a`` + jti ``bc`` must differ; ``json.dumps`` escapes lone surrogates to pure ASCII.
    """
    return hashlib.sha256(json.dumps([client_id, jti]).encode("ascii")).hexdigest()


_SEGMENT = rb"[A-Za-z0-9_-]+"
_COMPACT = re.compile(_SEGMENT + rb"\." + _SEGMENT + rb"\." + _SEGMENT)
_HEADER_MAX = 512
_SIGNATURE_MAX = 1024
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ"})
_ALLOWED_TYP = frozenset({"jwt", "client-authentication+jwt"})


class AssertionPolicy(msgspec.Struct, frozen=True, kw_only=True):
    issuer: str
    algs: frozenset[str]
    leeway: int = 10
    max_lifetime: int = 300
    max_age: int = 300
    jti_max_length: int = JTI_MAX_LENGTH
    assertion_max: int = ASSERTION_MAX
    allow_single_element_aud_array: bool = False
    #: The token endpoint URL, accepted as ``aud`` only for a client inside its legacy window.
    token_endpoint: str | None = None


class ParsedAssertion(msgspec.Struct, frozen=True):
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    client_id: str


class VerifiedAssertion(msgspec.Struct, frozen=True):
    client_id: str
    jti: str
    exp: float
    kid: str
    #: True when ``aud`` was the token endpoint URL, accepted under the client's migration window.
    legacy_aud: bool = False


def parse_assertion(value: str, policy: AssertionPolicy) -> ParsedAssertion:
    """Steps 1-3: everything that can be checked before knowing the client."""
    if len(value) > policy.assertion_max:
        raise InvalidClient("assertion_too_large")
    if not value.isascii():
        raise InvalidClient("assertion_malformed")
    raw = value.encode("ascii")
    if not _COMPACT.fullmatch(raw):
        raise InvalidClient("assertion_malformed")
    h64, p64, s64 = raw.split(b".")
    if len(h64) > _HEADER_MAX or len(s64) > _SIGNATURE_MAX:
        raise InvalidClient("assertion_malformed")

    header = _strict_object(h64, "header_invalid")
    if not _ALLOWED_HEADER.issuperset(header):
        raise InvalidClient("header_param_forbidden")
    if not all(type(v) is str and clean(v) for v in header.values()):
        raise InvalidClient("header_invalid")
    alg = header.get("alg")
    if alg is None or alg not in policy.algs:
        raise InvalidClient("alg_not_allowed")
    typ = header.get("typ")
    if typ is not None:
        t = typ.lower()
        if t.startswith("application/"):
            t = t[12:]
        if t not in _ALLOWED_TYP:
            raise InvalidClient("typ_invalid")

    claims = _strict_object(p64, "claims_invalid")
    iss, sub = claims.get("iss"), claims.get("sub")
    if type(iss) is not str or type(sub) is not str or not iss or not clean(iss):
        raise InvalidClient("iss_sub_invalid")
    if iss != sub:
        raise InvalidClient("iss_sub_mismatch")
    signature = b64decode(s64)
    if signature is None:
        raise InvalidClient("assertion_malformed")
    return ParsedAssertion(header, claims, h64 + b"." + p64, signature, iss)


def verify_assertion(parsed: ParsedAssertion, client: Client, policy: AssertionPolicy, now: float) -> VerifiedAssertion:
    """Steps 4-5 against the client named by the assertion."""
    claims = parsed.claims
    legacy_aud = _check_aud(claims.get("aud"), policy, client.record.legacy_token_endpoint_aud_until, now)

    if "exp" not in claims or claims["exp"] is None:
        raise InvalidClient("exp_missing")
    exp = _numeric_date(claims["exp"], "exp_invalid")
    if exp <= now - policy.leeway:
        raise InvalidClient("exp_expired")
    if exp - now > policy.max_lifetime:
        raise InvalidClient("exp_too_far")

    if claims.get("iat") is not None:
        iat = _numeric_date(claims["iat"], "iat_invalid")
        if iat > now + policy.leeway:
            raise InvalidClient("iat_in_future")
        if now - iat > policy.max_age:
            raise InvalidClient("iat_too_old")
        if exp - iat > policy.max_lifetime:
            raise InvalidClient("exp_too_far")
    if claims.get("nbf") is not None:
        nbf = _numeric_date(claims["nbf"], "nbf_invalid")
        if nbf > now + policy.leeway:
            raise InvalidClient("nbf_in_future")
        if nbf > exp:
            raise InvalidClient("nbf_after_exp")

    jti = claims.get("jti")
    if type(jti) is not str or not 1 <= len(jti) <= policy.jti_max_length or not clean(jti):
        raise InvalidClient("jti_invalid")

    # Key selection is scoped to this client's own keys (RFC 8725 §3.8, §3.10).
    kid = parsed.header.get("kid")
    if kid is None:
        if len(client.keys) != 1:
            raise InvalidClient("kid_ambiguous")
        key = next(iter(client.keys.values()))
    else:
        key = client.keys.get(kid)
        if key is None:
            raise InvalidClient("kid_unknown")
    if parsed.header["alg"] != key.alg:
        raise InvalidClient("alg_not_allowed")
    try:
        ok = key.verifier.verify(parsed.signing_input, parsed.signature, key.key)
    except Exception:
        ok = False
    if not ok:
        raise InvalidClient("signature_invalid")
    return VerifiedAssertion(parsed.client_id, jti, float(exp), key.kid, legacy_aud)


def _check_aud(aud: Any, policy: AssertionPolicy, legacy_until: int | None, now: float) -> bool:
    """True only when the legacy token-endpoint ``aud`` was accepted (the caller logs it)."""
    if type(aud) is str and aud == policy.issuer:
        return False
    if (
        legacy_until is not None
        and now < legacy_until
        and policy.token_endpoint is not None
        and type(aud) is str
        and aud == policy.token_endpoint
    ):
        return True
    if (
        policy.allow_single_element_aud_array
        and type(aud) is list
        and len(aud) == 1
        and type(aud[0]) is str
        and aud[0] == policy.issuer
    ):
        return False
    raise InvalidClient("aud_not_issuer")


def _strict_object(segment: bytes, reason: str) -> dict[str, Any]:
    try:
        return strict_object(segment, reason)
    except Malformed as exc:
        raise InvalidClient(exc.reason) from None


def _numeric_date(value: Any, reason: str) -> float:
    try:
        return numeric_date(value, reason)
    except Malformed as exc:
        raise InvalidClient(exc.reason) from None
