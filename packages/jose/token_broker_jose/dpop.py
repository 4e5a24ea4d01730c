"""DPoP proofs (RFC 9449): the one implementation the broker, the client library and the
resource-server verifier share.

``create_proof`` signs a proof for one HTTP request (client side). ``verify_proof`` runs the checks
of RFC 9449 §4.3 that need no state: one well-formed compact JWS, ``typ`` ``dpop+jwt``, an
asymmetric ``alg`` from the caller's list that fits the header's ``jwk`` (public members only),
the signature, ``htm`` and ``htu`` (compared after the normalization below, without query and
fragment), ``iat`` inside the acceptance window, the server nonce when the caller requires one, and
at a resource server ``ath`` (§4.3 step 12). What needs state is the caller's: recording the
proof's ``jti`` (unique per key thumbprint for the acceptance window) and, at a resource server,
comparing ``jkt`` with the token's ``cnf.jkt``.

Every refusal raises ``InvalidDPoPProof`` (``error`` ``invalid_dpop_proof``, RFC 9449 §5/§7.1) with a
stable ``reason`` for logs, or ``UseDPoPNonce`` (``error`` ``use_dpop_nonce``, §8/§9) when only the
nonce is missing or stale. Parsing is strict (``strict_object``): duplicate members, NaN,
non-canonical base64url are malformed, as for assertions.

The imported key of a proof header is kept in a small bounded map keyed by the header segment: a
client sends the same header (same ``typ``, ``alg``, ``jwk``) on every proof, so the JSON parse,
key import and thumbprint are done once per key, not per request.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from joserfc import jws

from token_broker_jose.constants import ALG_KEY_TYPES, ASSERTION_MAX, JTI_MAX_LENGTH
from token_broker_jose.jose import (
    ALG_SYNONYMS,
    ALGORITHMS,
    KEY_TYPES,
    Malformed,
    b64decode,
    b64url,
    numeric_date,
    strict_object,
)

DPOP_TYP = "dpop+jwt"
#: RFC 9449 §7.1 / RFC 9449 §5: the token type of a DPoP-bound access token.
TOKEN_TYPE = "DPoP"
#: The HTTP header carrying a proof, and the one carrying a server nonce (RFC 9449 §4.1, §8).
HEADER = "DPoP"
NONCE_HEADER = "DPoP-Nonce"
#: Asymmetric algorithms a proof may use (the broker's, all asymmetric; RFC 9449 §4.2).
DPOP_ALGS: tuple[str, ...] = tuple(ALG_KEY_TYPES)
#: The longest proof accepted (characters): the size cap of an assertion.
PROOF_MAX = ASSERTION_MAX
#: RFC 7638 §3.2: the members of a public JWK its thumbprint is computed over, per ``kty``.
_THUMBPRINT_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}
#: JWK members that only a private (or symmetric) key has: a proof carrying one is refused (§4.3 step 7).
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
_COMPACT = re.compile(rb"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_HEADER_CACHE_MAX = 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
#: RSA proof keys: the one exponent and the sizes the broker accepts for client keys.
_RSA_EXPONENT = 65537
_RSA_BITS = (2048, 4096)


class InvalidDPoPProof(Exception):
    """RFC 9449 ``invalid_dpop_proof``; ``reason`` is a stable log code, ``description`` for the caller."""

    error = "invalid_dpop_proof"

    def __init__(self, reason: str, description: str) -> None:
        super().__init__(reason)
        self.reason = reason
        self.description = description


class UseDPoPNonce(InvalidDPoPProof):
    """RFC 9449 §8 ``use_dpop_nonce``: the proof is otherwise valid; retry with the server's nonce."""

    error = "use_dpop_nonce"


@dataclass(frozen=True, slots=True)
class DPoPProof:
    """A proof that passed ``verify_proof``: what the caller still checks or records."""

    #: RFC 7638 thumbprint (base64url SHA-256) of the proof's public key: ``cnf.jkt`` (RFC 9449 §6.1).
    jkt: str
    jti: str
    iat: float
    alg: str
    nonce: str | None
    ath: str | None


@dataclass(frozen=True, slots=True)
class _Header:
    alg: str
    key: Any
    jkt: str


def jwk_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 SHA-256 thumbprint (base64url) of a public JWK; ``ValueError`` for an unknown ``kty``
    or a required member that is missing or not a string."""
    members = _THUMBPRINT_MEMBERS.get(jwk.get("kty"))  # type: ignore[arg-type]
    if members is None:
        raise ValueError("kty")
    required = {}
    for name in members:
        value = jwk.get(name)
        if type(value) is not str:
            raise ValueError(name)
        required[name] = value
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    return b64url(hashlib.sha256(canonical.encode("utf-8")).digest()).decode()


def access_token_hash(access_token: str) -> str:
    """RFC 9449 §4.2 ``ath``: base64url SHA-256 of the ASCII access token."""
    return b64url(hashlib.sha256(access_token.encode("ascii")).digest()).decode()


def normalize_htu(url: str) -> str | None:
    """The form ``htu`` values are compared in (RFC 9449 §4.3 step 9, RFC 3986 §6.2.2-6.2.3): scheme
    and host lower-cased, the scheme's default port dropped, an empty path as ``/``, query and
    fragment removed. None for anything that is not an absolute http(s) URL."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host or parts.username is not None or parts.password is not None:
        return None
    if ":" in host:
        host = f"[{host}]"
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return urlunsplit((scheme, netloc, parts.path or "/", "", ""))


def create_proof(
    key: Any,
    *,
    alg: str,
    htm: str,
    htu: str,
    access_token: str | None = None,
    nonce: str | None = None,
    now: float | None = None,
    jti: str | None = None,
) -> str:
    """A proof for one request (RFC 9449 §4.2): ``key`` a joserfc private key, ``htu`` the request's
    URL (query and fragment are dropped); ``access_token`` adds ``ath`` (a resource request)."""
    public = {name: value for name, value in key.as_dict(private=False).items()
              if name in _THUMBPRINT_MEMBERS.get(key.key_type, ())}
    header = {"typ": DPOP_TYP, "alg": alg, "jwk": public}
    parts = urlsplit(htu)
    claims: dict[str, Any] = {
        "jti": jti or secrets.token_urlsafe(16),
        "htm": htm,
        # Never the URL's userinfo: verifiers refuse it, and a proof is no place for a password.
        "htu": urlunsplit((parts.scheme, parts.netloc.rpartition("@")[2], parts.path, "", "")),
        "iat": int(time.time() if now is None else now),
    }
    if nonce is not None:
        claims["nonce"] = nonce
    if access_token is not None:
        claims["ath"] = access_token_hash(access_token)
    payload = json.dumps(claims, separators=(",", ":")).encode()
    return jws.serialize_compact(header, payload, key, algorithms=[alg])


_header_cache: dict[bytes, _Header] = {}


def _header(h64: bytes, algs: Collection[str]) -> _Header:
    """Parse and check a proof header (§4.3 steps 4, 5, 7); cached by segment (module docstring)."""
    cached = _header_cache.get(h64)
    if cached is not None:
        if cached.alg not in algs:
            raise InvalidDPoPProof("dpop_alg_not_allowed", "the DPoP proof's alg is not accepted here")
        return cached
    try:
        header = strict_object(h64, "dpop_header_invalid")
    except Malformed:
        raise InvalidDPoPProof("dpop_malformed", "the DPoP proof header is not a JSON object") from None
    if header.get("typ") != DPOP_TYP:
        raise InvalidDPoPProof("dpop_typ_invalid", "the DPoP proof's typ must be dpop+jwt")
    if "crit" in header:  # RFC 7515 §4.1.11: no extension is understood here, so none may be critical
        raise InvalidDPoPProof("dpop_crit", "the DPoP proof header must not list critical extensions (crit)")
    alg = header.get("alg")
    # Only a string is looked up: a JSON array or object is unhashable (a set's ``in`` would raise).
    if type(alg) is not str or (alg := ALG_SYNONYMS.get(alg, alg)) not in algs or alg not in ALG_KEY_TYPES:
        raise InvalidDPoPProof("dpop_alg_not_allowed", "the DPoP proof's alg is not accepted here")
    jwk = header.get("jwk")
    if type(jwk) is not dict:
        raise InvalidDPoPProof("dpop_jwk_missing", "the DPoP proof header must carry the public key as jwk")
    if _PRIVATE_MEMBERS.intersection(jwk):
        raise InvalidDPoPProof("dpop_jwk_private", "the DPoP proof's jwk must not contain private key members")
    kty, crv = ALG_KEY_TYPES[alg]
    if jwk.get("kty") != kty or (crv is not None and jwk.get("crv") != crv):
        raise InvalidDPoPProof("dpop_jwk_invalid", "the DPoP proof's jwk does not fit its alg")
    try:
        jkt = jwk_thumbprint(jwk)
        key = KEY_TYPES[kty].import_key(jwk)
        ALGORITHMS[alg].check_key(key)
        if kty == "RSA":
            _check_rsa(key.raw_value.public_numbers())
        canonical = _canonical_members(kty, key.raw_value)
    except Exception:  # whatever joserfc or cryptography raise for a key they cannot use
        raise InvalidDPoPProof("dpop_jwk_invalid", "the DPoP proof's jwk is not a usable public key") from None
    if any(jwk[name] != value for name, value in canonical.items()):
        # One key, one thumbprint: a coordinate with a leading zero octet or a base64url form with
        # stray bits imports as the same key but would bind the token to another jkt (RFC 7638 §3.3).
        raise InvalidDPoPProof("dpop_jwk_invalid", "the DPoP proof's jwk is not in its canonical form")
    parsed = _Header(alg, key, jkt)
    if len(_header_cache) >= _HEADER_CACHE_MAX:
        _header_cache.clear()  # bounded: a flood of distinct keys costs re-imports, never memory
    _header_cache[h64] = parsed
    return parsed


def _canonical_members(kty: str, public: Any) -> dict[str, str]:
    """The key-value members of ``public`` (a cryptography public key) as RFC 7518 §6 writes them:
    EC coordinates at the curve's full length, RSA integers in the fewest octets, OKP raw bytes."""
    if kty == "EC":
        numbers = public.public_numbers()
        size = (public.curve.key_size + 7) // 8
        return {name: b64url(v.to_bytes(size, "big")).decode() for name, v in (("x", numbers.x), ("y", numbers.y))}
    if kty == "RSA":
        numbers = public.public_numbers()
        return {name: b64url(v.to_bytes((v.bit_length() + 7) // 8, "big")).decode()
                for name, v in (("n", numbers.n), ("e", numbers.e))}
    return {"x": b64url(public.public_bytes_raw()).decode()}


def check_proof_key(key: Any) -> None:
    """Raise ValueError for a proof key verifiers refuse: an RSA key outside 2048-4096 bits or with
    an exponent other than 65537 (``verify_proof`` answers ``dpop_jwk_invalid`` for its proofs)."""
    if key.key_type == "RSA":
        _check_rsa(key.raw_value.public_key().public_numbers())


def _check_rsa(numbers: Any) -> None:
    """The RSA keys a client key may be (2048-4096 bits, e = 65537): anyone can send a proof, and a
    long exponent or modulus makes each signature check cost many times an ordinary one."""
    if numbers.e != _RSA_EXPONENT or not _RSA_BITS[0] <= numbers.n.bit_length() <= _RSA_BITS[1]:
        raise ValueError("rsa key shape")


def _claim(claims: dict[str, Any], name: str, limit: int = 2048) -> str:
    value = claims.get(name)
    if type(value) is not str or not value or len(value) > limit:
        raise InvalidDPoPProof(f"dpop_{name}_invalid", f"the DPoP proof's {name} claim is missing or invalid")
    return value


def verify_proof(
    proof: str,
    *,
    htm: str,
    htu: str,
    now: float,
    algs: Collection[str] = DPOP_ALGS,
    max_age: int = 60,
    leeway: int = 5,
    access_token: str | None = None,
    nonce_ok: Callable[[str | None], bool] | None = None,
) -> DPoPProof:
    """RFC 9449 §4.3 steps 2-11 (and 12's ``ath`` when ``access_token`` is given).

    ``htu`` is the URL the request was received at, as ``normalize_htu`` returns it. ``iat`` may be
    at most ``max_age`` seconds old and ``leeway`` seconds ahead. ``nonce_ok`` (optional) is asked
    about the proof's ``nonce`` (None when absent): False raises ``UseDPoPNonce``.
    """
    if type(proof) is not str or len(proof) > PROOF_MAX or not proof.isascii() or not _COMPACT.fullmatch(
            raw := proof.encode()):
        raise InvalidDPoPProof("dpop_malformed", "the DPoP header is not a compact JWS")
    h64, p64, s64 = raw.split(b".")
    header = _header(h64, algs)
    signature = b64decode(s64)
    try:
        ok = signature is not None and ALGORITHMS[header.alg].verify(h64 + b"." + p64, signature, header.key)
    except Exception:
        ok = False
    if not ok:
        raise InvalidDPoPProof("dpop_signature_invalid", "the DPoP proof's signature does not verify with its jwk")
    try:
        claims = strict_object(p64, "dpop_claims_invalid")
        iat = numeric_date(claims.get("iat"), "dpop_iat_invalid")
    except Malformed as exc:
        raise InvalidDPoPProof(exc.reason, "the DPoP proof's claims are malformed or iat is missing") from None
    jti = _claim(claims, "jti", JTI_MAX_LENGTH)
    if _claim(claims, "htm", 16) != htm:
        raise InvalidDPoPProof("dpop_htm_mismatch", f"the DPoP proof's htm must be {htm}")
    if normalize_htu(_claim(claims, "htu")) != htu:
        raise InvalidDPoPProof("dpop_htu_mismatch", f"the DPoP proof's htu must be {htu}")
    nonce = claims.get("nonce")
    if nonce is not None and (type(nonce) is not str or not nonce or len(nonce) > 512):
        raise InvalidDPoPProof("dpop_nonce_invalid", "the DPoP proof's nonce claim is invalid")
    if nonce_ok is not None and not nonce_ok(nonce):
        raise UseDPoPNonce("dpop_nonce_required" if nonce is None else "dpop_nonce_stale",
                           "Authorization server requires nonce in DPoP proof" if nonce is None
                           else "the DPoP proof's nonce is not current: retry with the DPoP-Nonce header's value")
    if iat > now + leeway:
        raise InvalidDPoPProof("dpop_iat_in_future", "the DPoP proof's iat is in the future")
    if iat < now - max_age - leeway:
        raise InvalidDPoPProof("dpop_iat_too_old", f"the DPoP proof is older than {max_age} seconds")
    ath = claims.get("ath")
    if access_token is not None:
        if type(ath) is not str or not ath.isascii() or not secrets.compare_digest(ath, access_token_hash(access_token)):
            raise InvalidDPoPProof("dpop_ath_mismatch", "the DPoP proof's ath does not match the access token")
    return DPoPProof(header.jkt, jti, iat, header.alg, nonce, ath if type(ath) is str else None)
