"""Test helpers: keys generated at test time, assertion builders, raw JWS construction.

``ISS`` is the test issuer; ``good()`` builds valid claims, ``sign()`` signs them with joserfc,
``raw()`` signs hand-written JSON that no encoder would produce, ``padded_assertion()`` makes
segments of an exact size for the size caps.
"""

from __future__ import annotations

import base64
import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from app.keystore import public_jwk

ISS = "https://broker.test"
TOKEN_URL = ISS + "/token"
URN = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
RS1 = "https://api.example.test"
RS2 = "https://other-api.example.test"

_GEN = {
    "ES256": lambda: ECKey.generate_key("P-256"),
    "ES384": lambda: ECKey.generate_key("P-384"),
    "PS256": lambda: RSAKey.generate_key(2048),
    "RS256": lambda: RSAKey.generate_key(2048),
    "Ed25519": lambda: OKPKey.generate_key("Ed25519"),
}


def new_key(alg: str) -> Any:
    return _GEN[alg]()


@dataclass
class TestClient:
    """A client under test (not a pytest test class)."""

    __test__ = False
    client_id: str
    alg: str = "ES256"
    kid: str | None = None
    key: Any = None
    scopes: tuple[str, ...] = ("read", "write")
    default_scopes: tuple[str, ...] = ("read",)
    audiences: tuple[str, ...] = (RS1, RS2)
    default_audience: str = RS1
    grant_types: tuple[str, ...] = ("client_credentials",)
    enabled: bool = True
    token_lifetime: int | None = None
    extra_keys: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.key is None:
            self.key = new_key(self.alg)
        if self.kid is None:
            self.kid = self.client_id + "-1"

    def public_jwk(self) -> dict[str, Any]:
        return public_jwk(self.key, alg=self.alg, kid=self.kid)

    def metadata(self) -> dict[str, Any]:
        return {
            "client_id": self.client_id,
            "jwks": {"keys": [self.public_jwk(), *self.extra_keys]},
            "scopes": list(self.scopes),
            "default_scopes": list(self.default_scopes),
            "audiences": list(self.audiences),
            "default_audience": self.default_audience,
            "grant_types": list(self.grant_types),
            "enabled": self.enabled,
            **({"token_lifetime": self.token_lifetime} if self.token_lifetime else {}),
        }

    def claims(self, now: float | None = None, **overrides: Any) -> dict[str, Any]:
        return good(self.client_id, now=now, **overrides)

    def assertion(self, now: float | None = None, header: dict[str, Any] | None = None, key: Any = None, **claims: Any) -> str:
        hdr = {"alg": self.alg, "kid": self.kid, "typ": "client-authentication+jwt"}
        if header is not None:
            hdr = header
        return sign(hdr, self.claims(now, **claims), key or self.key)


_MISSING = object()


def good(client_id: str, /, now: float | None = None, **overrides: Any) -> dict[str, Any]:
    t = int(time.time() if now is None else now)
    claims: dict[str, Any] = {"iss": client_id, "sub": client_id, "aud": ISS, "jti": uuid.uuid4().hex, "iat": t, "exp": t + 60}
    for k, v in overrides.items():
        if v is _MISSING or v is DROP:
            claims.pop(k, None)
        else:
            claims[k] = v
    return claims


class _Drop:
    def __repr__(self) -> str:
        return "DROP"


DROP = _Drop()


def sign(header: dict[str, Any], claims: dict[str, Any], key: Any) -> str:
    return jwt.encode(header, claims, key, algorithms=[header["alg"]] if header.get("alg") else None, default_type=None)


def b64u(data: bytes | str) -> str:
    if isinstance(data, str):
        data = data.encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw(header_text: str, payload_text: str, key: Any, alg: str = "ES256") -> str:
    """Compact JWS built by hand, for payloads no JSON encoder would produce."""
    signing_input = b64u(header_text) + "." + b64u(payload_text)
    sig = JWSRegistry.algorithms[alg].sign(signing_input.encode(), key)
    return signing_input + "." + b64u(sig)


def padded_assertion(client: TestClient, now: float, *, header: int = 0, payload: int = 0, signature: int = 0) -> str:
    """A compact JWS from ``client`` whose header / payload / signature segment is exactly that many
    base64url characters (0: its natural size), for the size caps.

    Header and payload are padded with JSON whitespace and signed with the client's real key, so
    only a size cap can refuse them. A longer signature is the real one followed by zero bytes:
    valid base64url that fails verification (no ES256 signature is that long).
    """
    header_json = json.dumps({"alg": client.alg, "kid": client.kid, "typ": "client-authentication+jwt"})
    payload_json = json.dumps(client.claims(now))
    if header:
        header_json = _pad_json(header_json, header)
    if payload:
        payload_json = _pad_json(payload_json, payload)
    h, p, s = raw(header_json, payload_json, client.key, client.alg).split(".")
    if signature:
        sig = base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))
        s = b64u(sig + b"\0" * (_bytes_for(signature) - len(sig)))
    return f"{h}.{p}.{s}"


def _bytes_for(b64_length: int) -> int:
    if b64_length % 4 == 1:
        raise ValueError(f"no byte string encodes to {b64_length} base64url characters")
    return 3 * b64_length // 4


def _pad_json(text: str, b64_length: int) -> str:
    """``text`` (a JSON object) with spaces before its closing brace: ``b64_length`` encoded."""
    missing = _bytes_for(b64_length) - len(text.encode())
    if missing < 0:
        raise ValueError(f"{text!r} is already longer than {b64_length} base64url characters")
    return text[:-1] + " " * missing + "}"


def form(assertion: str | None, **params: Any) -> dict[str, str]:
    out = {"grant_type": "client_credentials", "client_assertion_type": URN}
    if assertion is not None:
        out["client_assertion"] = assertion
    for k, v in params.items():
        if v is DROP:
            out.pop(k, None)
        else:
            out[k] = v
    return out


def decode_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    h, p, _ = token.split(".")
    pad = lambda s: s + "=" * (-len(s) % 4)  # noqa: E731
    return json.loads(base64.urlsafe_b64decode(pad(h))), json.loads(base64.urlsafe_b64decode(pad(p)))


def jti_of(assertion: str) -> str:
    return decode_unverified(assertion)[1]["jti"]
