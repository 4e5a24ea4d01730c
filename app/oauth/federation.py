"""Workload identity federation: a platform's workload token (Kubernetes projected service-account
token, SPIFFE JWT-SVID, GitHub Actions OIDC token...) verified as a client assertion against a
trusted issuer's rules (``app.oauth.trust``), and mapped to the one registered client it stands for.

Routing (``route``): an assertion is a workload token when its ``iss`` cannot be a client_id
(``CLIENT_ID_PATTERN`` has no ``/``, every issuer URL does), or when it has no ``iss`` and its
``sub`` is a SPIFFE ID (a JWT-SVID, looked up by the ID's trust domain). The caller then looks the
issuer up; an issuer it does not trust is refused (``federation_issuer_unknown``) unless ``iss`` ==
``sub``, which keeps the private_key_jwt refusal it always had.

``verify_federated``, in order, each refusal an ``invalid_client`` with its own reason:

1. ``alg`` one of the issuer's ``algs`` (asymmetric only: ``none`` and ``HS*`` never are); ``typ``
   absent or ``JWT`` (what Kubernetes, SPIRE and GitHub write);
2. a SPIFFE trust domain's token: its ``sub`` lies in that trust domain;
3. the signature, by a key the issuer publishes (``kid``, else ``x5t``, else every key of the
   ``alg``: ``app.oauth.assertion.candidate_keys``);
4. ``aud``: the required audience (the issuer's ``audience``, else the broker's issuer) as a string,
   or an array holding it, by default alone (``allow_other_audiences`` lifts that). Kubernetes and
   SPIRE always send an array. private_key_jwt assertions keep their own string rule;
5. ``exp`` and ``iat`` required, ``nbf`` honoured when present (SPIRE writes none), each with
   ``leeway``: not expired, not issued in the future, ``now - iat`` within ``max_token_age`` and
   ``exp - iat`` within ``max_lifetime``;
6. ``sub`` a printable string (no control characters) of 1-1024 characters; a ``single_use``
   issuer's token carries a ``jti``;
7. the mapping rules: no match ``federation_unmapped``, rules naming two clients
   ``federation_ambiguous`` (``app.oauth.trust.match_rules``).

Pure code: no I/O, the time is passed in. Finding the issuer, its keys and the mapped client is the
caller's (``app.service.federation``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import msgspec

from app.oauth.access_token import FederatedIdentity
from app.oauth.assertion import ParsedAssertion, candidate_keys, pair_hash, verifying_key
from app.oauth.clients import InvalidClientMetadata, validate_client_jwk
from app.oauth.errors import InvalidClient
from app.oauth.jose import Malformed, VerificationKey, clean, numeric_date
from app.oauth.trust import AmbiguousMapping, TrustedIssuer, _default_alg, match_rules, spiffe_trust_domain

#: ``client_assertion_type`` of draft-ietf-oauth-spiffe-client-auth (JWT-SVID client authentication).
SPIFFE_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-spiffe"
#: The federated ``sub`` in log lines: at most this many characters (the token's, not ours).
LOG_SUB_MAX = 200
_SUB_MAX = 1024
_ALLOWED_TYP = frozenset({"jwt", "application/jwt"})
#: Keys of a SPIFFE trust bundle that are not for JWT-SVIDs, and keys meant for encryption.
_SKIPPED_USE = frozenset({"enc", "x509-svid"})


class FederationPolicy(msgspec.Struct, frozen=True, kw_only=True):
    #: The broker's issuer identifier: the audience a token must carry unless its issuer names another.
    issuer: str
    leeway: int = 10
    jti_max_length: int = 256


class VerifiedFederation(msgspec.Struct, frozen=True):
    client_id: str
    identity: FederatedIdentity
    #: The token's ``jti`` (None when it carries none; a ``single_use`` issuer requires one).
    jti: str | None
    exp: float
    kid: str
    #: SHA-256 (hex) of the whole token: a reusable token's replay record holds it.
    digest: str


def route(claims: dict[str, Any]) -> str | None:
    """The trusted issuer to look up for these claims, or None for a private_key_jwt assertion."""
    iss = claims.get("iss")
    if iss is None:
        return spiffe_trust_domain(claims.get("sub"))
    # One substring test on the hot path: CLIENT_ID_PATTERN has no "/", every issuer URL has one.
    if type(iss) is str and "/" in iss:
        return iss
    return None


def log_sub(sub: Any) -> str:
    """A federated ``sub`` for a log line: printable ASCII (anything else escaped), truncated."""
    text = sub if type(sub) is str else repr(type(sub).__name__)
    safe = text.encode("ascii", "backslashreplace").decode("ascii")
    safe = "".join(c if c.isprintable() else "?" for c in safe)
    return safe if len(safe) <= LOG_SUB_MAX else safe[:LOG_SUB_MAX] + "..."


def verify_federated(parsed: ParsedAssertion, issuer: TrustedIssuer, keys: Mapping[str, VerificationKey],
                     policy: FederationPolicy, now: float) -> VerifiedFederation:
    """Steps 1-7 (module docstring); raises ``InvalidClient`` with the reason."""
    claims = parsed.claims
    if parsed.alg not in issuer.algs:
        raise InvalidClient("federation_alg_not_allowed")
    typ = parsed.header.get("typ")
    if typ is not None and typ.lower() not in _ALLOWED_TYP:
        raise InvalidClient("federation_typ_invalid")
    sub = claims.get("sub")
    if issuer.spiffe and spiffe_trust_domain(sub) != issuer.issuer:
        raise InvalidClient("federation_sub_invalid")
    candidates = candidate_keys(parsed, keys)
    if isinstance(candidates, str):
        raise InvalidClient("federation_key_unknown" if candidates != "alg_not_allowed" else "federation_alg_not_allowed")
    key = verifying_key(candidates, parsed)
    if key is None:
        raise InvalidClient("federation_signature_invalid")
    _check_aud(claims.get("aud"), issuer.audience or policy.issuer, issuer.allow_other_audiences)
    exp = _check_times(claims, issuer, policy, now)
    # Printable only: it is copied into the access token, the audit log and a resource server's logs
    # (no control characters, no lone surrogates; str.isprintable refuses both).
    if type(sub) is not str or not 1 <= len(sub) <= _SUB_MAX or not sub.isprintable():
        raise InvalidClient("federation_sub_invalid")
    jti = claims.get("jti")
    if jti is not None and (type(jti) is not str or not 1 <= len(jti) <= policy.jti_max_length or not clean(jti)):
        raise InvalidClient("federation_jti_invalid")
    if jti is None and issuer.single_use:
        raise InvalidClient("federation_jti_missing")
    try:
        client_id = match_rules(issuer, claims)
    except AmbiguousMapping as exc:
        raise InvalidClient("federation_ambiguous", log_detail="clients " + ", ".join(exc.client_ids)[:300]) from None
    if client_id is None:
        raise InvalidClient("federation_unmapped")
    digest = hashlib.sha256(parsed.signing_input + b"." + parsed.signature).hexdigest()
    return VerifiedFederation(client_id, FederatedIdentity(issuer.issuer, sub), jti, exp, key.kid, digest)


def _check_aud(aud: Any, required: str, allow_other: bool) -> None:
    if type(aud) is str:
        if aud == required:
            return
        raise InvalidClient("federation_aud_invalid", log_detail="other")
    if type(aud) is list and required in aud and all(type(a) is str for a in aud):
        if allow_other or all(a == required for a in aud):
            return
        raise InvalidClient("federation_aud_invalid", log_detail="array_with_other_members")
    raise InvalidClient("federation_aud_invalid", log_detail="array_without_audience" if type(aud) is list else "other")


def _check_times(claims: dict[str, Any], issuer: TrustedIssuer, policy: FederationPolicy, now: float) -> float:
    leeway = policy.leeway
    if claims.get("exp") is None:
        raise InvalidClient("federation_exp_missing")
    if claims.get("iat") is None:
        raise InvalidClient("federation_iat_missing")
    exp = _date(claims["exp"], "federation_exp_invalid")
    iat = _date(claims["iat"], "federation_iat_invalid")
    if exp <= now - leeway:
        raise InvalidClient("federation_expired")
    if iat > now + leeway:
        raise InvalidClient("federation_iat_in_future")
    if now - iat > issuer.max_token_age + leeway:
        raise InvalidClient("federation_too_old", log_detail=f"age {_secs(now - iat)} > {issuer.max_token_age}s")
    if exp - iat > issuer.max_lifetime:
        raise InvalidClient("federation_lifetime_too_long",
                            log_detail=f"lifetime {_secs(exp - iat)} > {issuer.max_lifetime}s")
    if claims.get("nbf") is not None and _date(claims["nbf"], "federation_nbf_invalid") > now + leeway:
        raise InvalidClient("federation_not_yet_valid")
    return exp


def _date(value: Any, reason: str) -> float:
    try:
        return float(numeric_date(value, reason))
    except Malformed:
        raise InvalidClient(reason) from None


def _secs(value: float) -> str:
    return f"{value:.0f}s" if value < 1e9 else "over 1e9 s"


def replay_jti(issuer: str, verified: VerifiedFederation, single_use: bool) -> str:
    """The jti the replay record is kept under (per mapped client, like an assertion's): the token's
    own for a ``single_use`` issuer, qualified by the issuer (two issuers may mint the same jti);
    the token's digest otherwise (a reusable token is recorded once, ``app.service.federation``)."""
    if single_use:
        assert verified.jti is not None
        return "federated:" + pair_hash(issuer, verified.jti)
    return "federated-token:" + verified.digest


def issuer_keys(jwks: Any, issuer: TrustedIssuer) -> tuple[list[dict[str, Any]], list[str]]:
    """The usable signing keys of a JWKS an issuer publishes, validated like a client's keys, and
    the reasons of the keys left out. A SPIFFE bundle's ``use: jwt-svid`` keys are signing keys;
    its ``x509-svid`` keys and any ``enc`` key are skipped; a key without ``alg`` is bound to the
    first of the issuer's algs its type fits, RS256 first for RSA (``app.oauth.trust._default_alg``)."""
    members = jwks.get("keys") if isinstance(jwks, dict) else None
    if not isinstance(members, list):
        return [], ["not_jwks"]
    keys: list[dict[str, Any]] = []
    refused: list[str] = []
    for jwk in members[:50]:
        if not isinstance(jwk, dict) or jwk.get("use") in _SKIPPED_USE:
            continue
        if jwk.get("use") == "jwt-svid":
            jwk = {k: v for k, v in jwk.items() if k != "use"}
        try:
            key = validate_client_jwk(jwk, default_alg=_default_alg(jwk, issuer.algs))
        except InvalidClientMetadata as exc:
            refused.append(exc.reason)
            continue
        if key["alg"] in issuer.algs and all(k["kid"] != key["kid"] for k in keys):
            keys.append(key)
    return keys, refused
