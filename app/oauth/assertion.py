"""Client assertion verification: RFC 7523 §3 as updated by RFC 10070 (``aud`` = issuer only).

The steps, in order (``docs/security.md`` explains each):

1. syntax gate before any JSON: ASCII, exactly three base64url segments, size caps;
2. header: strict JSON object holding only ``alg``, ``kid``, ``typ``, ``x5t``, ``x5t#S256`` (all
   strings), ``alg`` in the broker's allow-list (``EdDSA`` read as ``Ed25519``, ``ALG_SYNONYMS``),
   ``typ`` absent / ``JWT`` / ``client-authentication+jwt``. Headers that carry or point at a key
   (``jwk``, ``jku``, ``x5c``, ``x5u``) and ``crit`` are refused;
3. payload: strict JSON object (duplicate members, NaN/Infinity refused); ``iss`` == ``sub`` names
   the client, which the caller then looks up (keys are only ever taken from that client);
4. signature with the client's keys, each through joserfc's algorithm bound to that key: the key
   named by ``kid``; else, when the client has several keys, those whose certificate or RFC 7638
   thumbprint an ``x5t`` / ``x5t#S256`` header names; else all of them; of these, the ones bound
   to the assertion's ``alg``, tried in registration order (at most ``MAX_KEYS``) until one
   verifies. When no key of the client's can have signed it (unknown ``kid`` or thumbprint,
   ``alg`` not the key's), the signature is checked against a decoy key of that ``alg`` before
   the refusal (``DecoyKeys``), and the caller does the same for an unknown or disabled client:
   every assertion that gets this far costs at least one signature verification, so the time of
   the answer does not tell which clients and kids exist (a kid-less bad signature costs one per
   key tried: ``docs/security.md``);
5. ``aud`` is the issuer string (a one-element array of it only when the deployment allows that;
   the token endpoint URL only inside the client's legacy window or with its compat profile's
   ``token_endpoint_aud``);
6. claims: ``exp`` required, not past, within the lifetime cap (the client's compat profile may
   set its own); ``iat`` not too old and not in the future; ``nbf`` honoured; ``jti`` a string of
   1 to ``jti_max_length`` (default 256) characters. A refusal here is a
   ``SignedAssertionRefused``: the client's key signed this assertion for this broker (the rate
   limiter counts only these toward the client).

Only then may the caller record the ``jti`` (replay step). Any failure is an ``InvalidClient``
with a precise ``reason`` for the log; every such error renders identically.
"""

from __future__ import annotations

import functools
import hashlib
import re
from collections.abc import Callable, Mapping
from json.encoder import encode_basestring_ascii as _json_string
from types import MappingProxyType
from typing import Any

import msgspec

from app.oauth.clients import Client, ClientRecord
from app.oauth.constants import ALG_KEY_TYPES, ASSERTION_MAX, JTI_MAX_LENGTH
from app.oauth.errors import InvalidClient
from app.oauth.jose import (
    ALG_SYNONYMS,
    KEY_TYPES,
    Malformed,
    VerificationKey,
    b64decode,
    clean,
    numeric_date,
    strict_object,
    verification_key,
)


def pair_hash(first: str, second: str) -> str:
    """SHA-256 (hex) of ``json.dumps([first, second])``, byte for byte, without the JSON encoder's
    per-call set-up (≈ 5 µs → 1.5 µs): the JSON string escaping is the same C function
    ``json.dumps`` uses (ASCII only: lone surrogates and non-ASCII escaped), and ``", "`` its
    default separator. ``tests/test_properties.py`` checks the equality."""
    return hashlib.sha256(f"[{_json_string(first)}, {_json_string(second)}]".encode("ascii")).hexdigest()


@functools.lru_cache(maxsize=1024)
def jti_hash(client_id: str, jti: str) -> str:
    """The one name for an assertion's jti outside the token itself: SHA-256 of ``[client_id, jti]``.

    Replay records are keyed by it and logs carry it instead of the jti (enough to correlate,
    useless to replay). A JSON array, not a concatenation: client ``ab`` + jti ``c`` and client
    ``a`` + jti ``bc`` must differ; JSON escapes lone surrogates to pure ASCII. Remembered for the
    last 1024 pairs: one request names the same pair up to twice (its log field and its Redis key;
    a minted token's jti in its ``at_jti_hash`` and its cache pointer).
    """
    return pair_hash(client_id, jti)


_SEGMENT = rb"[A-Za-z0-9_-]+"
_COMPACT = re.compile(_SEGMENT + rb"\." + _SEGMENT + rb"\." + _SEGMENT)
_HEADER_MAX = 512
_SIGNATURE_MAX = 1024
_ALLOWED_HEADER = frozenset({"alg", "kid", "typ", "x5t", "x5t#S256"})
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
    #: The token endpoint URL, accepted as ``aud`` only for a client inside its legacy window or
    #: whose compat profile says ``token_endpoint_aud``.
    token_endpoint: str | None = None


#: The compat features ``VerifiedAssertion.compat`` names (the metric's ``feature`` label).
TOKEN_ENDPOINT_AUD = "token_endpoint_aud"
ASSERTION_LIFETIME = "assertion_lifetime"
ASSERTION_REUSE = "assertion_reuse"


class ParsedAssertion(msgspec.Struct, frozen=True):
    #: Read-only: one mapping shared by every assertion with the same header bytes (``_header``).
    header: Mapping[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    client_id: str
    #: The header's ``alg`` under the broker's name for it (``ALG_SYNONYMS``).
    alg: str
    #: A workload token to verify against this trusted issuer's rules instead (``route``); then
    #: ``client_id`` is empty and nothing but the syntax (steps 1-2 without ``alg``/``typ``) is checked.
    route: str | None = None


class VerifiedAssertion(msgspec.Struct, frozen=True):
    client_id: str
    jti: str
    exp: float
    kid: str
    #: True when ``aud`` was the token endpoint URL, accepted under the client's migration window.
    legacy_aud: bool = False
    #: The compat features this assertion needed (``TOKEN_ENDPOINT_AUD``, ``ASSERTION_LIFETIME``).
    compat: tuple[str, ...] = ()


def parse_assertion(value: str, policy: AssertionPolicy, route: Callable[[dict[str, Any]], str | None] | None = None,
                    ) -> ParsedAssertion:
    """Steps 1-3: everything that can be checked before knowing the client.

    ``route`` (workload identity federation, ``app.oauth.federation.route``): when it names an
    issuer for the claims, the assertion comes back unchecked past the syntax, ``route`` set. Every
    other assertion gets exactly the refusals it got without it."""
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

    header = _header(h64)
    alg = header.get("alg")
    alg = ALG_SYNONYMS.get(alg, alg)
    refusal: InvalidClient | None = None
    if route is None:
        _check_header(alg, header.get("typ"), policy)
    else:  # a workload token is held to its issuer's algs instead: decided once the claims name it
        try:
            _check_header(alg, header.get("typ"), policy)
        except InvalidClient as exc:
            refusal = exc

    try:
        claims = strict_object(p64, "claims_invalid")
    except Malformed as exc:  # a header refusal comes first, as it always did
        raise refusal or InvalidClient(exc.reason) from None
    if route is not None:
        issuer = route(claims)
        if issuer is not None:
            signature = b64decode(s64)
            if signature is None:
                raise InvalidClient("assertion_malformed")
            return ParsedAssertion(header, claims, h64 + b"." + p64, signature, "", alg or "", issuer)
        if refusal is not None:
            raise refusal
    iss, sub = claims.get("iss"), claims.get("sub")
    if type(iss) is not str or type(sub) is not str or not iss or not clean(iss):
        raise InvalidClient("iss_sub_invalid")
    if iss != sub:
        raise InvalidClient("iss_sub_mismatch")
    signature = b64decode(s64)
    if signature is None:
        raise InvalidClient("assertion_malformed")
    return ParsedAssertion(header, claims, h64 + b"." + p64, signature, iss, alg)


@functools.lru_cache(maxsize=256)
def _header(h64: bytes) -> Mapping[str, Any]:
    """The header segment decoded and checked (only its parameters and their characters: ``alg``
    and ``typ`` are checked against the policy by the caller). Every assertion of a client carries
    the same header (``alg``, ``kid``, ``typ``), so it is decoded once per distinct header, not
    once per request (≈ 3 CPU µs saved, docs/performance.md); a refusal is raised every time. Read-only,
    since the same mapping goes to every assertion with these bytes. At most 256 headers of at most
    ``_HEADER_MAX`` bytes are kept; many distinct headers only cost their own decoding, as before."""
    header = _strict_object(h64, "header_invalid")
    if not _ALLOWED_HEADER.issuperset(header):
        raise InvalidClient("header_param_forbidden")
    if not all(type(v) is str and clean(v) for v in header.values()):
        raise InvalidClient("header_invalid")
    return MappingProxyType(header)


def _check_header(alg: str | None, typ: str | None, policy: AssertionPolicy) -> None:
    if alg is None or alg not in policy.algs:
        raise InvalidClient("alg_not_allowed")
    if typ is not None:
        t = typ.lower()
        if t.startswith("application/"):
            t = t[12:]
        if t not in _ALLOWED_TYP:
            raise InvalidClient("typ_invalid")


class SignedAssertionRefused(InvalidClient):
    """A claim rule refused an assertion that the client's own key signed for this broker.

    Only the key holder can make a new one; anyone who saw this one can send it again, so the
    rate limiter counts each signed content once (``signed_hash``) and an expired one only for a
    short while after its ``exp``.
    """

    def __init__(self, reason: str, *, signed_hash: str, exp: float | None, log_detail: str | None = None) -> None:
        super().__init__(reason, log_detail=log_detail)
        #: SHA-256 (hex) of the signing input: the same content however its signature varies.
        self.signed_hash = signed_hash
        #: The assertion's ``exp`` when it is a valid NumericDate, else None.
        self.exp = exp


class DecoyKeys:
    """One public key per allowed algorithm, generated once at start, that no client holds.

    ``spend`` verifies an assertion's signature against the one for its ``alg`` and ignores the
    answer: the refusals that find no key of the client's cost the same signature work as a bad
    signature does. RSA decoys are 2048 bits, the size most clients register.
    """

    def __init__(self, algs: frozenset[str] | tuple[str, ...]) -> None:
        self._keys = {alg: _decoy_key(alg) for alg in algs}

    def spend(self, parsed: ParsedAssertion) -> None:
        _signature_ok(self._keys[parsed.alg], parsed)


def _decoy_key(alg: str) -> VerificationKey:
    kty, crv = ALG_KEY_TYPES[alg]
    private = KEY_TYPES[kty].generate_key(crv or 2048)
    return verification_key(private.as_dict(private=False), kid="decoy", alg=alg)


def verify_assertion(parsed: ParsedAssertion, client: Client, policy: AssertionPolicy, now: float,
                     decoys: DecoyKeys | None = None) -> VerifiedAssertion:
    """Steps 4-6 against the client named by the assertion (``decoys``: the broker always passes
    them; offline tools that do not care about timing may leave them out)."""
    keys = _client_keys(parsed, client)
    if isinstance(keys, str):  # a refusal: do the signature work anyway, then refuse
        if decoys is not None:
            decoys.spend(parsed)
        raise InvalidClient(keys)
    key = verifying_key(keys, parsed)
    if key is None:
        raise InvalidClient("signature_invalid")
    record = client.record
    try:
        aud = _check_aud(parsed.claims.get("aud"), policy, record, now)
    except InvalidClient as exc:  # also say whether the lifetime would be refused next (one round of fixes)
        longer = _lifetime_excess(parsed.claims, now, _limits(record, policy)[0])
        if longer is not None:
            exc.log_detail = f"{exc.log_detail}; also {longer}"
        raise
    try:
        jti, exp, stretched = _check_claims(parsed.claims, policy, now, _limits(record, policy))
    except InvalidClient as exc:
        raise SignedAssertionRefused(exc.reason, signed_hash=hashlib.sha256(parsed.signing_input).hexdigest(),
                                     exp=_exp_or_none(parsed.claims), log_detail=exc.log_detail) from None
    if aud is None and not stretched:
        return VerifiedAssertion(parsed.client_id, jti, exp, key.kid)
    compat = (TOKEN_ENDPOINT_AUD,) if aud == TOKEN_ENDPOINT_AUD else ()
    return VerifiedAssertion(parsed.client_id, jti, exp, key.kid, aud == _LEGACY,
                             compat + (ASSERTION_LIFETIME,) if stretched else compat)


def _client_keys(parsed: ParsedAssertion, client: Client) -> tuple[VerificationKey, ...] | str:
    """The client's keys that may have signed the assertion, in registration order, or the reason
    there is none.

    Key selection is scoped to this client's own keys (RFC 8725 §3.8, §3.10). ``kid`` names one
    key; without it an ``x5t#S256`` or ``x5t`` header narrows several keys down to those it names
    (ignored for a client with one key); each candidate must be bound to the assertion's ``alg``.
    """
    return candidate_keys(parsed, client.keys)


def candidate_keys(parsed: ParsedAssertion, published: Mapping[str, VerificationKey]
                   ) -> tuple[VerificationKey, ...] | str:
    """``_client_keys`` over any key set (a trusted issuer's too): ``kid``, else ``x5t``, else all."""
    kid = parsed.header.get("kid")
    if kid is not None:
        key = published.get(kid)
        if key is None:
            return "kid_unknown"
        return (key,) if key.alg == parsed.alg else "alg_not_allowed"
    keys: Any = published.values()
    if len(published) > 1:
        thumbprint = parsed.header.get("x5t#S256") or parsed.header.get("x5t")
        if thumbprint is not None:
            thumbprint = thumbprint.rstrip("=")  # MSAL pads it (urlsafe_b64encode); RFC 7515 does not
            keys = [k for k in keys if thumbprint in k.thumbprints]
            if not keys:
                return "x5t_unknown"
    fitting = tuple(k for k in keys if k.alg == parsed.alg)
    if not fitting:
        return "alg_not_allowed" if keys else "kid_unknown"
    return fitting


def verifying_key(keys: tuple[VerificationKey, ...], parsed: ParsedAssertion) -> VerificationKey | None:
    """The first key whose signature check passes (one check per key tried)."""
    for key in keys:
        if _signature_ok(key, parsed):
            return key
    return None


def _limits(record: ClientRecord, policy: AssertionPolicy) -> tuple[int, int]:
    """(lifetime cap, age cap): the deployment's, or the client's own from its compat profile."""
    compat = record.compat
    if compat is None or compat.assertion_max_lifetime is None:
        return policy.max_lifetime, policy.max_age
    return compat.assertion_max_lifetime, compat.assertion_max_lifetime


def _lifetime_excess(claims: dict[str, Any], now: float, max_lifetime: int) -> str | None:
    """For the log of an ``aud`` refusal: the lifetime the claims step would refuse next, if any
    (a client that sends the token endpoint URL as ``aud`` often signs for an hour too)."""
    exp = _exp_or_none(claims)
    if exp is None:
        return None
    iat = claims.get("iat")
    start = min(now, iat) if type(iat) in (int, float) else now
    return f"lifetime {_secs(exp - start)} > {max_lifetime}s" if exp - start > max_lifetime else None


def _exp_or_none(claims: dict[str, Any]) -> float | None:
    try:
        return float(numeric_date(claims.get("exp"), "exp_invalid"))
    except Malformed:
        return None


def _signature_ok(key: VerificationKey, parsed: ParsedAssertion) -> bool:
    try:
        return bool(key.verifier.verify(parsed.signing_input, parsed.signature, key.key))
    except Exception:
        return False


def _check_claims(claims: dict[str, Any], policy: AssertionPolicy, now: float,
                  limits: tuple[int, int]) -> tuple[str, float, bool]:
    """Step 6: the time claims and the jti under ``limits`` (lifetime cap, age cap); returns
    (jti, exp, whether the assertion is beyond the deployment's caps: only a compat profile's
    longer ``limits`` can have let it through)."""
    max_lifetime, max_age = limits
    if "exp" not in claims or claims["exp"] is None:
        raise InvalidClient("exp_missing")
    exp = _numeric_date(claims["exp"], "exp_invalid")
    if exp <= now - policy.leeway:
        raise InvalidClient("exp_expired")
    if exp - now > max_lifetime:
        raise InvalidClient("exp_too_far", log_detail=f"lifetime {_secs(exp - now)} > {max_lifetime}s")
    stretched = exp - now > policy.max_lifetime

    if claims.get("iat") is not None:
        iat = _numeric_date(claims["iat"], "iat_invalid")
        if iat > now + policy.leeway:
            raise InvalidClient("iat_in_future")
        if now - iat > max_age:
            raise InvalidClient("iat_too_old", log_detail=f"age {_secs(now - iat)} > {max_age}s")
        if exp - iat > max_lifetime:
            raise InvalidClient("exp_too_far", log_detail=f"lifetime {_secs(exp - iat)} > {max_lifetime}s")
        stretched = stretched or now - iat > policy.max_age or exp - iat > policy.max_lifetime
    if claims.get("nbf") is not None:
        nbf = _numeric_date(claims["nbf"], "nbf_invalid")
        if nbf > now + policy.leeway:
            raise InvalidClient("nbf_in_future")
        if nbf > exp:
            raise InvalidClient("nbf_after_exp")

    jti = claims.get("jti")
    if type(jti) is not str or not 1 <= len(jti) <= policy.jti_max_length or not clean(jti):
        raise InvalidClient("jti_invalid")
    return jti, float(exp), stretched


_LEGACY = "legacy"


def _check_aud(aud: Any, policy: AssertionPolicy, record: ClientRecord, now: float) -> str | None:
    """None for the issuer; for the token endpoint URL, what allowed it (the caller logs and counts
    it): the client's compat profile (``TOKEN_ENDPOINT_AUD``) or its legacy window (``_LEGACY``)."""
    if type(aud) is str:
        if aud == policy.issuer:
            return None
        if aud == policy.token_endpoint and aud is not None:
            if record.compat is not None and record.compat.token_endpoint_aud:
                return TOKEN_ENDPOINT_AUD
            until = record.legacy_token_endpoint_aud_until
            if until is not None and now < until:
                return _LEGACY
    elif (
        policy.allow_single_element_aud_array
        and type(aud) is list
        and len(aud) == 1
        and type(aud[0]) is str
        and aud[0] == policy.issuer
    ):
        return None
    raise InvalidClient("aud_not_issuer", log_detail=_aud_kind(aud, policy))


def _secs(value: float) -> str:
    """A duration for the log, bounded in length whatever NumericDate the assertion carried."""
    return f"{value:.0f}s" if value < 1e9 else "over 1e9 s"


def _aud_kind(aud: Any, policy: AssertionPolicy) -> str:
    """What a refused ``aud`` was, as one fixed word for the log (never the value itself)."""
    if aud == policy.token_endpoint:
        return "token_endpoint"
    if type(aud) is str and aud.rstrip("/") == policy.issuer:
        return "issuer_with_trailing_slash"
    if type(aud) is list:
        return "array_with_token_endpoint" if policy.token_endpoint in aud else "array"
    return "other"


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
