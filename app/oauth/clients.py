"""Registered clients and their public keys (RFC 7591 §2 metadata, RFC 7517 keys).

``ClientRecord`` is what the registry stores (JSON). ``Client`` is the prepared, in-memory form
used on the hot path: every JWK parsed once into a ``VerificationKey`` (``app.oauth.jose``), a
joserfc key bound to its one algorithm. ``validate_client_jwk`` is the registration-time gate for
a public key (private, symmetric, undersized or mismatched keys are refused); the same gate runs
on every key fetched from a client's ``jwks_uri`` (RFC 7591 §2).

A registered JWK may carry ``nbf`` / ``exp`` (NumericDate, RFC 7519 §2): the key is used only
inside that window. It may carry ``x5c`` (RFC 7517 §4.7: its certificate first, then the chain):
registration checks that the first certificate holds the JWK's own public key, and
``prepare_keys`` computes its ``x5t`` / ``x5t#S256`` thumbprints once, so an assertion may name the
key by them (clients such as MSAL send a certificate thumbprint instead of a ``kid``). The
certificate is only a name for the key: its dates, issuer and chain are not checked.

``CompatProfile`` is the operator's per-client relaxation of the strict assertion rules for
clients that cannot follow them (``compat_profile`` validates it; ``app.oauth.assertion`` applies
it). Off unless the operator sets it; an empty profile is stored as no profile. ``prepare_client(record, now)`` keeps the keys usable at ``now`` and says
when the answer next changes (``Client.refresh_at``), so callers that cache it know when to redo it.

Every registration has its own random ``registration_id``, kept across updates of that
registration and new when a deleted client_id is registered again. An access token carries it as
the prefix of its ``jti`` (``registration_jti``), so a token of a deleted registration is told
apart from the tokens of a later registration with the same client_id (``jti_registration``).
Records stored before the id existed read back with ``LEGACY_REGISTRATION`` (the empty string),
whose tokens have no prefix: they keep working unchanged.

``encode_record`` / ``decode_record`` are the one codec of a stored record; ``check_storable``
reads a record back through it before it is stored, so nothing the typed decoder refuses is ever
written. ``key_thumbprint`` is the RFC 7638 thumbprint of the imported key (EC coordinates may be
written non-canonically, so JWK strings are never compared); the registry indexes registered keys
by it to keep one key to one client unless both registrations set ``allow_shared_key``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import re
import secrets
from collections.abc import Iterable
from typing import Any

import msgspec
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from app.oauth.access_token import new_token_id
from app.oauth.constants import ALG_KEY_TYPES, CLIENT_ID_PATTERN, GRANT_CLIENT_CREDENTIALS
from app.oauth.errors import OAuthError
from app.oauth.jose import ALG_SYNONYMS, KEY_TYPES, VerificationKey, certificate_thumbprints, import_jwk, verification_key
from app.oauth.key_strength import WeakKey, check_public_key

CLIENT_ID_RE = re.compile(CLIENT_ID_PATTERN)
#: RFC 6749 App. A.4: scope-token = 1*NQCHAR (%x21 / %x23-5B / %x5D-7E).
SCOPE_TOKEN = r"[\x21\x23-\x5b\x5d-\x7e]+"
SCOPE_TOKEN_RE = re.compile(SCOPE_TOKEN)
MAX_KEYS = 10
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})
#: Members a registered JWK may carry besides the key itself (kept on the stored key).
_WINDOW_MEMBERS = ("nbf", "exp")
#: Kept on the stored key too, never part of the key material: the key's certificate chain.
_X5C = "x5c"
_NOT_MATERIAL = ("alg", "use", "key_ops", "kid", *_WINDOW_MEMBERS, _X5C)
#: Bounds on a registered ``x5c``: certificates in the chain, base64 characters per certificate.
_X5C_MAX_CERTS = 10
_X5C_MAX_CHARS = 16384
#: client_id prefixes reserved for user subjects (RFC 9068 §5): an access token's
#: ``sub`` is the client_id, so a client must never be able to take a user's subject. Compared
#: case-insensitively; deployments add their own namespaces with BROKER_RESERVED_CLIENT_ID_PREFIXES.
RESERVED_CLIENT_ID_PREFIXES = ("user:", "user.", "user-", "user_", "users:", "usr:", "uid:", "sub:", "person:",
                               "human:", "employee:", "account:", "auth0")


class InvalidClientMetadata(OAuthError):
    """RFC 7591 §3.2.2."""

    error = "invalid_client_metadata"
    description = "The client metadata is invalid."

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(reason)
        #: Safe to show the administrator who sent the metadata (it names their own input).
        self.detail = detail


#: The registration id of records stored before registration ids existed.
LEGACY_REGISTRATION = ""


#: The features of a compat profile, as the admin API, the CLI and the clients file name them.
COMPAT_FEATURES = ("token_endpoint_aud", "assertion_max_lifetime", "assertion_reuse")
#: The longest assertion lifetime a compat profile may allow (seconds).
COMPAT_MAX_LIFETIME = 3600


class CompatProfile(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """Per-client relaxations the operator turns on for clients that cannot follow the strict rules."""

    #: Also accept the token endpoint URL as the assertion ``aud`` (the issuer always is).
    token_endpoint_aud: bool = False
    #: The client's own cap on ``exp - now``, ``exp - iat`` and ``now - iat`` (1 to 3600 s), instead
    #: of BROKER_ASSERTION_MAX_LIFETIME / BROKER_ASSERTION_MAX_AGE; its replay records live as long.
    assertion_max_lifetime: int | None = None
    #: Accept the very same assertion (same jti, byte-identical) again until its ``exp``.
    assertion_reuse: bool = False


def compat_profile(value: Any) -> CompatProfile | None:
    """The ``compat`` member of client metadata, validated; None for an absent or empty profile."""
    if value is None:
        return None
    if not isinstance(value, dict):
        raise InvalidClientMetadata("compat_invalid", 'compat must be a JSON object, e.g. {"token_endpoint_aud": true, '
                                    '"assertion_max_lifetime": 3600, "assertion_reuse": true}')
    unknown = sorted(str(name) for name in value if name not in COMPAT_FEATURES)
    if unknown:
        raise InvalidClientMetadata("compat_unknown_feature", f"unknown compat feature {unknown[0][:40]!r}: the "
                                    f"features are {', '.join(COMPAT_FEATURES)}")
    for name in ("token_endpoint_aud", "assertion_reuse"):
        if type(value.get(name, False)) is not bool:
            raise InvalidClientMetadata("compat_invalid", f"compat {name} must be true or false")
    lifetime = value.get("assertion_max_lifetime")
    if lifetime is not None and (type(lifetime) is not int or not 1 <= lifetime <= COMPAT_MAX_LIFETIME):
        raise InvalidClientMetadata("compat_invalid", "compat assertion_max_lifetime must be a whole number of seconds "
                                    f"from 1 to {COMPAT_MAX_LIFETIME}")
    profile = CompatProfile(token_endpoint_aud=value.get("token_endpoint_aud", False), assertion_max_lifetime=lifetime,
                            assertion_reuse=value.get("assertion_reuse", False))
    return None if profile == _NO_COMPAT else profile


_NO_COMPAT = CompatProfile()


class ClientRecord(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    client_id: str
    #: This registration (random; kept by updates, new after a delete and register again).
    registration_id: str = LEGACY_REGISTRATION
    jwks: dict[str, list[dict[str, Any]]] = msgspec.field(default_factory=dict)
    #: RFC 7591 §2: keys fetched from this URL instead of ``jwks`` (exactly one of the two is set).
    jwks_uri: str | None = None
    #: Algorithm for fetched keys that carry no ``alg`` of their own (RFC 7591 §2).
    token_endpoint_auth_signing_alg: str | None = None
    #: Migration aid: until this unix time, ``aud`` = the token endpoint URL is also accepted.
    legacy_token_endpoint_aud_until: int | None = None
    scopes: tuple[str, ...] = ()
    default_scopes: tuple[str, ...] = ()
    audiences: tuple[str, ...] = ()
    default_audience: str | None = None
    grant_types: tuple[str, ...] = (GRANT_CLIENT_CREDENTIALS,)
    token_lifetime: int | None = None
    enabled: bool = True
    created_at: int = 0
    updated_at: int = 0
    #: Bumped by every admin change (even twice in one second); part of the token-cache key.
    version: int = 0
    #: An admin client the operator configured (BROKER_ADMIN_JWKS or the clients file): only such
    #: a client may hold ``broker:admin`` (any ``broker:`` scope but ``broker:introspect``) or the
    #: admin audience, and the admin API cannot change or delete it.
    admin: bool = False
    #: This registration agrees to share its public keys with other registrations that agree too.
    allow_shared_key: bool = False
    #: The operator's relaxations for this client (None: the strict rules, the default).
    compat: CompatProfile | None = None
    #: RFC 9449 §5.2: every token request of this client must carry a DPoP proof (its tokens are
    #: always DPoP-bound); a request without one is refused with ``invalid_dpop_proof``.
    dpop_bound_access_tokens: bool = False


_record_decoder = msgspec.json.Decoder(ClientRecord)
_record_encoder = msgspec.json.Encoder()


def encode_record(record: ClientRecord) -> bytes:
    return _record_encoder.encode(record)


def decode_record(raw: bytes) -> ClientRecord:
    """Raises ``msgspec.DecodeError`` / ``msgspec.ValidationError`` for anything but a typed record."""
    return _record_decoder.decode(raw)


def check_storable(record: ClientRecord) -> None:
    """Encode the record and read it back with the registry's typed decoder, and parse its keys:
    a record that would not read back identical (a wrongly typed field) is refused before it is
    stored, never found later by every reader."""
    try:
        ok = decode_record(encode_record(record)) == record
        prepare_keys(record.jwks.get("keys", ()), None)
    except Exception:
        ok = False
    if not ok:
        raise InvalidClientMetadata("metadata_invalid", "the client metadata has a field of the wrong type")


def new_registration_id() -> str:
    """96 random bits, URL-safe base64 (never contains '.')."""
    return secrets.token_urlsafe(12)


def registration_jti(registration_id: str) -> str:
    """A new access-token ``jti`` bound to a registration: ``<registration_id>.<128 random bits>``
    (a legacy registration's tokens keep the plain random jti)."""
    token_id = new_token_id()
    return f"{registration_id}.{token_id}" if registration_id else token_id


def jti_registration(jti: str) -> str:
    """The registration an access token's ``jti`` was issued to (``LEGACY_REGISTRATION`` if none)."""
    registration, dot, _ = jti.partition(".")
    return registration if dot else LEGACY_REGISTRATION


def canonical_key(key: Any) -> Any:
    """The same public key re-exported from its numbers: joserfc keeps the members it was given,
    so an EC coordinate or RSA modulus written with a leading zero byte would otherwise give
    another JWK (and another RFC 7638 thumbprint) for the same key."""
    return type(key).import_key(key.raw_value)


def key_thumbprint(jwk: dict[str, Any]) -> str:
    """RFC 7638 thumbprint of the key itself (imported and re-exported, so equal keys written
    differently match). A key that no longer imports is indexed by a digest of its JSON instead
    (it is never usable)."""
    material = {k: v for k, v in jwk.items() if k not in _NOT_MATERIAL}
    try:
        return canonical_key(import_jwk(material)).thumbprint()
    except Exception:
        return "raw:" + hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()


def record_thumbprints(record: ClientRecord) -> tuple[str, ...]:
    """The thumbprints of a record's registered keys, sorted and unique (none for a jwks_uri client)."""
    return tuple(sorted({key_thumbprint(k) for k in record.jwks.get("keys", ()) if isinstance(k, dict)}))


class Client(msgspec.Struct, frozen=True):
    record: ClientRecord
    keys: dict[str, VerificationKey]
    scopes: frozenset[str]
    #: When the usable key set next changes (a key's nbf or exp, or a fetched set's expiry).
    refresh_at: float = math.inf
    #: When a ``jwks_uri`` client's keys were fetched (None: registered keys, never stale).
    fetched_at: float | None = None

    @property
    def client_id(self) -> str:
        return self.record.client_id


def prepare_keys(jwks: Iterable[dict[str, Any]], now: float | None) -> tuple[dict[str, VerificationKey], float]:
    """Parse every key usable at ``now`` once; also return when that set next changes.

    ``now=None`` ignores key windows (offline tools, benchmarks); the broker always passes its clock.
    """
    keys: dict[str, VerificationKey] = {}
    refresh_at = math.inf
    for jwk in jwks:
        if now is not None:
            nbf, exp = jwk.get("nbf"), jwk.get("exp")
            if nbf is not None and nbf > now:
                refresh_at = min(refresh_at, nbf)
                continue
            if exp is not None:
                if exp <= now:
                    continue
                refresh_at = min(refresh_at, exp)
        material = {k: v for k, v in jwk.items() if k not in _WINDOW_MEMBERS and k != _X5C}
        prepared = verification_key(material, kid=jwk["kid"], alg=jwk["alg"])
        check_public_key(prepared.key.raw_value)  # a record stored before the check existed: WeakKey, never used
        keys[jwk["kid"]] = dataclasses.replace(prepared, thumbprints=_selectors(prepared, jwk.get(_X5C)))
    return keys, refresh_at


def _selectors(prepared: VerificationKey, x5c: Any) -> frozenset[str]:
    """What an ``x5t`` / ``x5t#S256`` header may name the key by: its RFC 7638 thumbprint, and the
    thumbprints of its certificate (``x5c[0]``, checked at registration) when it has one."""
    names = {prepared.key.thumbprint()}
    if isinstance(x5c, list) and x5c and isinstance(x5c[0], str):
        names.update(certificate_thumbprints(base64.b64decode(x5c[0])))
    return frozenset(names)


def prepare_client(record: ClientRecord, now: float | None = None) -> Client:
    """Parse every registered key once; the result is what the token endpoint uses.

    A ``jwks_uri`` client gets its keys later (``with_keys``), from the fetched set.
    """
    keys, refresh_at = prepare_keys(record.jwks.get("keys", ()), now)
    return Client(record, keys, frozenset(record.scopes), refresh_at)


def with_keys(client: Client, jwks: Iterable[dict[str, Any]], now: float, fetched_until: float,
              fetched_at: float) -> Client:
    keys, refresh_at = prepare_keys(jwks, now)
    return Client(client.record, keys, client.scopes, min(refresh_at, fetched_until), fetched_at)


def client_id_reserved(client_id: str, prefixes: Iterable[str]) -> bool:
    """Whether ``client_id`` starts with one of ``prefixes`` (case-insensitively)."""
    lowered = client_id.lower()
    return any(lowered.startswith(p.lower()) for p in prefixes)


def validate_client_jwk(jwk: Any, *, default_alg: str | None = None) -> dict[str, Any]:
    """Check one public JWK for registration and return it stamped with ``alg``, ``use`` and ``kid``.

    Refuses private or symmetric material, RSA outside 2048-4096 bits, curves that do not match the
    algorithm, keys meant for encryption, and weak keys (``app.oauth.key_strength``). The kid defaults to the RFC 7638 thumbprint.
    ``alg`` ``EdDSA`` is stored as ``Ed25519`` (an Ed25519 key only); an ``x5c`` must hold this key (``_x5c_member``).
    """
    if not isinstance(jwk, dict):
        raise InvalidClientMetadata("jwk_not_object", "each key must be a JSON object (a JWK)")
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in KEY_TYPES:
        raise InvalidClientMetadata(
            "jwk_kty", f"unsupported key type {str(kty)[:20]!r}: use EC, RSA or OKP (no symmetric keys)"
        )
    if _PRIVATE_MEMBERS & jwk.keys():
        raise InvalidClientMetadata(
            "jwk_private", "the key holds private key material; register only the public key"
        )
    alg = jwk.get("alg", default_alg)
    alg = ALG_SYNONYMS.get(alg, alg) if isinstance(alg, str) else alg  # "EdDSA" is stored as "Ed25519"
    if not isinstance(alg, str) or alg not in ALG_KEY_TYPES:
        raise InvalidClientMetadata(
            "jwk_alg", f"alg must be one of {', '.join(ALG_KEY_TYPES)} (got {str(alg)[:20]!r})"
        )
    want_kty, want_crv = ALG_KEY_TYPES[alg]
    if kty != want_kty or (want_crv and jwk.get("crv") != want_crv):
        raise InvalidClientMetadata("jwk_alg_mismatch", f"{alg} needs a {want_kty} key{' on ' + want_crv if want_crv else ''}")
    if jwk.get("use", "sig") != "sig":
        raise InvalidClientMetadata("jwk_use", "the key's use must be 'sig'")
    ops = jwk.get("key_ops")
    if ops is not None and (not isinstance(ops, list) or any(op != "verify" for op in ops)):
        raise InvalidClientMetadata("jwk_key_ops", "key_ops may only contain 'verify'")
    if kty == "RSA":
        _check_rsa_numbers(jwk)
    try:
        key = canonical_key(import_jwk({k: v for k, v in jwk.items() if k not in _NOT_MATERIAL}))
    except Exception:
        raise InvalidClientMetadata("jwk_invalid", "the key could not be parsed (bad coordinates or modulus)") from None
    if key.is_private:
        raise InvalidClientMetadata("jwk_private", "the key holds private key material")
    try:
        check_public_key(key.raw_value)
    except WeakKey as exc:
        raise InvalidClientMetadata(exc.reason, exc.detail) from None
    if kty == "RSA":
        n = key.raw_value.public_numbers()
        bits = n.n.bit_length()
        if bits < 2048 or bits > 4096:
            raise InvalidClientMetadata("jwk_rsa_size", f"RSA keys must be 2048-4096 bits (got {bits})")
        if n.e < 3 or n.e % 2 == 0:
            raise InvalidClientMetadata("jwk_rsa_exponent", "RSA public exponent must be odd and at least 3")
    kid = jwk.get("kid") or key.thumbprint()
    if not isinstance(kid, str) or not 1 <= len(kid) <= 128 or not kid.isascii() or not kid.isprintable():
        raise InvalidClientMetadata("jwk_kid", "kid must be 1-128 printable ASCII characters")
    public = key.as_dict(private=False)
    public.update(kid=kid, alg=alg, use="sig", **_key_window(jwk), **_x5c_member(jwk.get(_X5C), key))
    return public


def _x5c_member(x5c: Any, key: Any) -> dict[str, list[str]]:
    """A registered ``x5c`` (RFC 7517 §4.7): 1-10 standard-base64 DER certificates, the first one
    holding this very public key. Returns it as given ({} when there is none)."""
    if x5c is None:
        return {}
    if (not isinstance(x5c, list) or not 1 <= len(x5c) <= _X5C_MAX_CERTS
            or not all(isinstance(c, str) and 0 < len(c) <= _X5C_MAX_CHARS for c in x5c)):
        raise InvalidClientMetadata("jwk_x5c_invalid", f"x5c must be a list of 1-{_X5C_MAX_CERTS} base64 DER "
                                    "certificates, the key's own certificate first")
    try:
        ders = [base64.b64decode(c, validate=True) for c in x5c]
        cert = x509.load_der_x509_certificate(ders[0])
        cert_key = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except (binascii.Error, ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidClientMetadata("jwk_x5c_invalid", "x5c[0] is not a base64 DER X.509 certificate") from None
    if cert_key != key.raw_value.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo):
        raise InvalidClientMetadata("jwk_x5c_mismatch", "the certificate x5c[0] holds another public key than the JWK")
    return {_X5C: list(x5c)}


def _key_window(jwk: dict[str, Any]) -> dict[str, int]:
    """The key's validity window (``nbf`` / ``exp``, NumericDate in whole seconds) as registered."""
    window = {}
    for name in _WINDOW_MEMBERS:
        value = jwk.get(name)
        if value is not None:
            if type(value) is not int or not 0 < value < 2**53:
                raise InvalidClientMetadata("jwk_window", f"the key's {name} must be a unix time in whole seconds")
            window[name] = value
    if "nbf" in window and "exp" in window and window["exp"] <= window["nbf"]:
        raise InvalidClientMetadata("jwk_window", "the key's exp must be after its nbf")
    return window


def _check_rsa_numbers(jwk: dict[str, Any]) -> None:
    """Size and exponent from the JWK itself, before any import (joserfc only warns on small keys)."""
    n, e = _b64_int(jwk.get("n")), _b64_int(jwk.get("e"))
    if n is None or e is None:
        raise InvalidClientMetadata("jwk_invalid", "the key could not be parsed (bad coordinates or modulus)")
    bits = n.bit_length()
    if bits < 2048 or bits > 4096:
        raise InvalidClientMetadata("jwk_rsa_size", f"RSA keys must be 2048-4096 bits (got {bits})")
    if e < 3 or e % 2 == 0:
        raise InvalidClientMetadata("jwk_rsa_exponent", "RSA public exponent must be odd and at least 3")


def _b64_int(value: Any) -> int | None:
    if not isinstance(value, str) or not value or len(value) > 1024 or not re.fullmatch(r"[A-Za-z0-9_-]+", value):
        return None
    try:
        return int.from_bytes(base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)), "big")
    except ValueError:
        return None


def validate_client_jwks(keys: Iterable[Any], *, default_alg: str | None = None) -> dict[str, list[dict[str, Any]]]:
    keys = list(keys)
    # Count first: parsing a thousand RSA keys is work an attacker should not get for free.
    if len(keys) > MAX_KEYS:
        raise InvalidClientMetadata("jwks_too_many", f"at most {MAX_KEYS} keys per client")
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for jwk in keys:
        public = validate_client_jwk(jwk, default_alg=default_alg)
        if public["kid"] in seen:
            raise InvalidClientMetadata("jwk_duplicate_kid", f"duplicate kid {public['kid']!r}")
        seen.add(public["kid"])
        out.append(public)
    return {"keys": out}


def validate_scope_list(values: Iterable[Any], field: str) -> tuple[str, ...]:
    out = []
    for v in values:
        if not isinstance(v, str) or not SCOPE_TOKEN_RE.fullmatch(v) or len(v) > 128:
            raise InvalidClientMetadata("scope_invalid", f"{field}: {str(v)[:40]!r} is not a valid scope token (RFC 6749 §3.3)")
        out.append(v)
    return tuple(sorted(set(out)))
