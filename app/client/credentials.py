"""The client's own key for private_key_jwt (RFC 7523 §2.2): loaded from a JWK file or object.

The private key stays in the client process: only assertions signed with it leave. ``alg`` and
``kid`` come from the JWK (the values registered at the broker) unless given explicitly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from app.oauth.jose import import_jwk

_DEFAULT_ALG = {("EC", "P-256"): "ES256", ("EC", "P-384"): "ES384", ("OKP", "Ed25519"): "Ed25519", ("RSA", None): "PS256"}


def default_alg(key: Any) -> str:
    """The algorithm a key is registered with when its JWK names none (one alg per key)."""
    kty = key.key_type
    crv = key.as_dict(private=False).get("crv") if kty != "RSA" else None
    alg = _DEFAULT_ALG.get((kty, crv))
    if alg is None:
        raise ValueError(f"unsupported key type {kty} {crv or ''}: use EC P-256/P-384, Ed25519 or RSA")
    return alg


class ClientKey:
    """A private signing key with the ``alg`` and ``kid`` the broker knows it by."""

    def __init__(self, key: Any, *, alg: str | None = None, kid: str | None = None) -> None:
        if isinstance(key, (str, Path)):
            key = _read_jwk(Path(key))
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
                             "a JWK file, a joserfc private key or a ClientKey")
        if not key.is_private:
            raise ValueError("the client key is a public key: expected the private JWK (with its private part, "
                             "\"d\"), which stays with the service; the broker holds the public half")
        self.key = key
        self.alg = alg or default_alg(key)
        self.kid = kid or key.thumbprint()

    def __repr__(self) -> str:  # never show key material
        return f"ClientKey(alg={self.alg!r}, kid={self.kid!r})"


def _read_jwk(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
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
