"""JOSE helpers shared by the assertion and access-token verifiers: keys and strict parsing.

Shared by the broker (``app.oauth.jose`` re-exports it), the client and the resource-server
libraries, so each rule has one definition. ``import_jwk`` is the one JWK → joserfc key conversion and ``verification_key`` the one way to
bind a public key to the algorithm it verifies (``VerificationKey``): client keys, the broker's
own keys and the keys a resource server fetches all go through them. ``ALG_SYNONYMS`` maps the
other names libraries write for an algorithm the broker supports onto the broker's one name.

RFC 7515 §5.2 and RFC 8725 §3.7 let a recipient refuse what stdlib ``json`` would accept:
duplicate members, ``NaN``/``Infinity``, invalid UTF-8, non-canonical base64url. Both verifiers
go through ``strict_object`` and ``numeric_date`` so that every parser on the path sees the same values.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from joserfc.jwa import ESAlgorithm
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from token_broker_jose.constants import ALG_KEY_TYPES

_MAX_SAFE_INT = 2**53

#: joserfc key class per JWK ``kty``: the key types the broker, its clients and verifiers use.
KEY_TYPES = {"EC": ECKey, "RSA": RSAKey, "OKP": OKPKey}
#: ``alg`` values some libraries write for an algorithm the broker knows by another name (joserfc's
#: names): RFC 8037 ``EdDSA`` over an Ed25519 key is the fully specified ``Ed25519``. The key a
#: synonym is verified with must still be one registered for the broker's name (an Ed25519 key).
ALG_SYNONYMS = {"EdDSA": "Ed25519"}


class EcdsaAlgorithm(ESAlgorithm):
    """ES256, ES384, ES512 (RFC 7518 §3.4): joserfc's ``ESAlgorithm`` (its name, curve, key check
    and key-operation rules) with its per-call set-up moved to the constructor.

    joserfc builds an ``ECDSA`` object and converts R || S to and from DER through hex strings on
    every call; here the ``ECDSA`` object is made once and the integers go through
    ``int.from_bytes`` / ``to_bytes``. The answers are the same (tests/test_jws_algorithms.py), the
    CPU is not: about 4 µs less per ES256 verify and 6 µs per sign on the benchmark machine
    (docs/performance.md, round 2, twelfth pass).
    """

    def __init__(self, name: str, curve: str, sha_type: Any, recommended: bool = False) -> None:
        super().__init__(name, curve, sha_type, recommended)
        self._ecdsa = ec.ECDSA(self.hash_alg())

    def sign(self, msg: bytes, key: ECKey) -> bytes:
        r, s = decode_dss_signature(key.get_op_key("sign").sign(msg, self._ecdsa))
        size = (key.curve_key_size + 7) // 8
        return r.to_bytes(size, "big") + s.to_bytes(size, "big")

    def verify(self, msg: bytes, sig: bytes, key: ECKey) -> bool:
        size = (key.curve_key_size + 7) // 8
        if len(sig) != 2 * size:
            return False
        der = encode_dss_signature(int.from_bytes(sig[:size], "big"), int.from_bytes(sig[size:], "big"))
        try:
            key.get_op_key("verify").verify(der, msg, self._ecdsa)
        except InvalidSignature:
            return False
        return True


#: The JWS algorithms the broker and its libraries sign and verify with, by ``alg``: joserfc's
#: registry with its ECDSA algorithms replaced by ``EcdsaAlgorithm``. A copy: joserfc's own
#: registry, which other code in the same process may use, is left as it is.
ALGORITHMS: dict[str, Any] = {
    **JWSRegistry.algorithms,
    **{alg.name: EcdsaAlgorithm(alg.name, alg.curve, alg.algorithm_security, alg.recommended)
       for alg in JWSRegistry.algorithms.values() if type(alg) is ESAlgorithm},
}


def import_jwk(jwk: dict[str, Any]) -> Any:
    """The one JWK → joserfc key conversion; ``KeyError``/``ValueError`` for what it cannot import."""
    return KEY_TYPES[jwk["kty"]].import_key(jwk)


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A public key bound to the one algorithm it may verify (RFC 8725 §3.1).

    A frozen dataclass with slots (not a msgspec Struct) so that the client and resource libraries
    need no msgspec; it is built when keys are loaded, never per request.
    """

    kid: str
    alg: str
    verifier: Any  # ``ALGORITHMS[alg]``
    key: Any  # joserfc public key
    #: Values an assertion's ``x5t`` / ``x5t#S256`` header may select this key by (a client's key:
    #: its certificate's thumbprints and its RFC 7638 thumbprint, computed once when it is prepared).
    thumbprints: frozenset[str] = frozenset()


def generate_private_key(alg: str) -> Any:
    """A new private key of the type ``alg`` needs (RSA keys are 2048 bits)."""
    kty, crv = ALG_KEY_TYPES[alg]
    return KEY_TYPES[kty].generate_key(crv or 2048)


def public_jwk(key: Any, *, alg: str, kid: str | None = None) -> dict[str, Any]:
    """The public JWK of ``key`` bound to ``alg``, ``kid`` its RFC 7638 thumbprint unless given."""
    pub = key.as_dict(private=False)
    pub.update(kid=kid or key.thumbprint(), alg=alg, use="sig")
    return pub


def verification_key(jwk: dict[str, Any], *, kid: str, alg: str) -> VerificationKey:
    """Import ``jwk`` and bind it to ``alg``; raises for a key it cannot import or that does not fit ``alg``."""
    key = import_jwk(jwk)
    verifier = ALGORITHMS[alg]
    verifier.check_key(key)
    return VerificationKey(kid, alg, verifier, key)


def certificate_thumbprints(der: bytes) -> tuple[str, str]:
    """RFC 7515 §4.1.7-8: (``x5t``, ``x5t#S256``) of a DER certificate, base64url SHA-1 and SHA-256.

    SHA-1 because ``x5t`` is defined with it: the value only names a key the signature must still verify with.
    """
    sha1 = hashlib.sha1(der, usedforsecurity=False).digest()
    return b64url(sha1).decode(), b64url(hashlib.sha256(der).digest()).decode()


class Malformed(ValueError):
    """A JOSE segment or claim is malformed; ``reason`` is a stable log code."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def b64url(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


def b64decode(segment: bytes) -> bytes | None:
    """Decode unpadded base64url; None for anything non-canonical (stray trailing bits)."""
    try:
        data = base64.urlsafe_b64decode(segment + b"=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        return None
    if b64url(data) != segment:
        return None
    return data


def _reject_constant(name: str) -> Any:
    raise ValueError(name)


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        raise ValueError("duplicate member")
    return obj


# Built once: json.loads() with hooks would build a new decoder for every segment.
_DECODER = json.JSONDecoder(object_pairs_hook=_unique_pairs, parse_constant=_reject_constant)


def strict_object(segment: bytes, reason: str) -> dict[str, Any]:
    """Decode one base64url segment as a JSON object, or raise ``Malformed(reason)``."""
    data = b64decode(segment)
    if data is None:
        raise Malformed(reason)
    try:
        obj = _DECODER.decode(data.decode("utf-8"))
    except Exception:  # ValueError, UnicodeDecodeError, RecursionError, int-size limits
        raise Malformed(reason) from None
    if type(obj) is not dict:
        raise Malformed(reason)
    return obj


def numeric_date(value: Any, reason: str) -> float:
    """RFC 7519 §2 NumericDate: a finite, non-negative JSON number; booleans, strings, huge ints refused."""
    t = type(value)
    if t is int:
        if 0 <= value < _MAX_SAFE_INT:
            return value
    elif t is float and math.isfinite(value) and value >= 0:
        return value
    raise Malformed(reason)


def clean(text: str) -> bool:
    """No lone surrogates (they break UTF-8 encoders in Redis clients and logs)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True
