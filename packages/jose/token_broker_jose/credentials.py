"""The client's own key for private_key_jwt (RFC 7523 §2.2): a JWK or PEM file, or a key object.

The private key stays in the client process: only assertions signed with it leave. ``alg`` and
``kid`` come from the JWK (the values registered at the broker) unless given explicitly. A PEM
private key (PKCS#8, SEC1 or PKCS#1) or a ``cryptography`` private key carries neither: its kid is
the RFC 7638 thumbprint, which is what the broker computes when the public half is registered,
and its alg the one the broker binds a PEM key registered without ``--alg`` to: the key type's
(``default_alg``), except RSA, which is RS256 (what most libraries sign with) rather than PS256.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from token_broker_jose.jose import KEY_TYPES, generate_private_key, import_jwk, public_jwk

_DEFAULT_ALG = {("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("OKP", "Ed25519"): "Ed25519", ("RSA", None): "PS256"}
#: The alg of an RSA key given as PEM (or a ``cryptography`` key) without one: the broker binds an
#: RSA public key registered from PEM without --alg to RS256, so the client signs with that too.
PEM_RSA_ALG = "RS256"
#: ``cryptography`` private key class → JWK ``kty`` (joserfc imports each by its own class).
_PRIVATE_KEY_TYPES = ((ec.EllipticCurvePrivateKey, "EC"), (rsa.RSAPrivateKey, "RSA"), (ed25519.Ed25519PrivateKey, "OKP"))
_NATIVE_TYPES = tuple(cls for cls, _ in _PRIVATE_KEY_TYPES)


def default_alg(key: Any) -> str:
    """The algorithm a key is registered with when its JWK names none (one alg per key)."""
    kty = key.key_type
    crv = key.as_dict(private=False).get("crv") if kty != "RSA" else None
    alg = _DEFAULT_ALG.get((kty, crv))
    if alg is None:
        raise ValueError(f"unsupported key type {kty} {crv or ''}: use EC P-256/P-384, Ed25519 or RSA")
    return alg


def generate_key_pair(alg: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new key pair: (private JWK, public JWK), both with ``kid`` = RFC 7638 thumbprint and ``alg``."""
    key = generate_private_key(alg)
    kid = key.thumbprint()
    private = {**key.as_dict(private=True), "kid": kid, "alg": alg, "use": "sig"}
    return private, public_jwk(key, alg=alg, kid=kid)


class ClientKey:
    """A private signing key with the ``alg`` and ``kid`` the broker knows it by."""

    def __init__(self, key: Any, *, alg: str | None = None, kid: str | None = None) -> None:
        if isinstance(key, (str, Path)):
            key = _read_key_file(Path(key))
        if isinstance(key, _NATIVE_TYPES):
            key = _from_native(key)
            alg = alg or (PEM_RSA_ALG if key.key_type == "RSA" else None)
        if isinstance(key, dict):
            jwk = key
            alg = alg or jwk.get("alg")
            kid = kid or jwk.get("kid")
            try:
                key = import_jwk(jwk)
            except Exception:  # whatever joserfc raises for a malformed JWK: one clear message
                raise ValueError(f"the client key is not a valid JWK (kty {str(jwk.get('kty'))[:20]!r}): expected an "
                                 "EC, OKP or RSA private JWK, as keygen writes it") from None
        if not hasattr(key, "is_private"):
            raise ValueError(f"the client key is a {type(key).__name__}: expected a private JWK (a dict), the path of "
                             "a JWK or PEM file, a joserfc or cryptography private key, or a ClientKey")
        if not key.is_private:
            raise ValueError("the client key is a public key: expected the private JWK (with its private part, "
                             "\"d\"), which stays with the service; the broker holds the public half")
        self.key = key
        self.alg = alg or default_alg(key)
        self.kid = kid or key.thumbprint()

    def __repr__(self) -> str:  # never show key material
        return f"ClientKey(alg={self.alg!r}, kid={self.kid!r})"


def _from_native(key: Any) -> Any:
    """A joserfc key for a ``cryptography`` private key of a type the broker supports."""
    kty = next(kty for cls, kty in _PRIVATE_KEY_TYPES if isinstance(key, cls))
    return KEY_TYPES[kty].import_key(key)


def _read_key_file(path: Path) -> Any:
    """A JWK file's object, or the ``cryptography`` key of a PEM private key file."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValueError(f"cannot read client key file {path}: {type(exc).__name__}") from None
    if raw.lstrip().startswith(b"-----BEGIN"):
        return _read_pem(path, raw)
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"cannot read client key file {path}: {type(exc).__name__}") from None
    if isinstance(data, dict) and isinstance(data.get("keys"), list):
        if len(data["keys"]) != 1:
            raise ValueError(f"client key file {path} holds a JWK set of {len(data['keys'])} keys: expected one "
                             "private JWK (or a set of exactly one)")
        data = data["keys"][0]
    if not isinstance(data, dict):
        raise ValueError(f"client key file {path} holds a JSON {type(data).__name__}: expected a private JWK "
                         "(a JSON object)")
    return data


def _read_pem(path: Path, raw: bytes) -> Any:
    if b"PRIVATE KEY-----" not in raw:
        raise ValueError(f"client key file {path} holds no PEM private key (a public key or certificate?): the client "
                         "needs the private key; the broker holds the public half")
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except TypeError:
        raise ValueError(f"client key file {path} holds an encrypted PEM private key: give it unencrypted (mode 0600), "
                         "or decrypt it and pass the key object") from None
    except Exception:  # ValueError, UnsupportedAlgorithm: whatever cryptography raises for bad PEM
        raise ValueError(f"client key file {path}: not a PEM private key this library can read (PKCS#8, SEC1 or "
                         "PKCS#1)") from None
    if not isinstance(key, _NATIVE_TYPES):
        raise ValueError(f"client key file {path} holds a {type(key).__name__}: use an EC P-256/P-384, Ed25519 or RSA key")
    return key
