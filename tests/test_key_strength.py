"""Weak client keys are refused wherever a client key enters: registration (admin API, clients
file), keys fetched from a ``jwks_uri``, and records stored before the check existed.

The attack: an Ed25519 public key that is a small-order point (the identity, say) verifies one
constant signature over every message, so anyone can authenticate as that client. RSA keys with an
even modulus, a small prime factor or a small public exponent are refused for the same reason:
their security rests on nothing.
"""

from __future__ import annotations

import json
import secrets
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc.jwk import ECKey, OKPKey

from app.oauth.clients import ClientRecord, InvalidClientMetadata, validate_client_jwk
from app.oauth.jose import import_jwk
from app.oauth.key_strength import WeakKey, check_public_key
from app.service.jwks_fetch import JwksFetchError, parse_fetched_jwks
from tests.conftest import Broker
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import RS1, TestClient, b64u, form, good
from tests.keyserver import KeyServer
from tests.test_admin_api import admin_headers, bad_request, meta
from tests.test_jwks_uri import jwks_settings, register_uri_client

# -- edwards25519, computed here independently of the module under test (RFC 8032 §5.1) ----------

P = 2**255 - 19
D = -121665 * pow(121666, -1, P) % P
L = 2**252 + 27742317777372353535851937790883648493  # order of the prime-order subgroup
SQRT_M1 = pow(2, (P - 1) // 4, P)
IDENTITY = (0, 1)


def _add(a: tuple[int, int], b: tuple[int, int]) -> tuple[int, int]:
    (x1, y1), (x2, y2) = a, b
    t = D * x1 * x2 * y1 * y2 % P
    return (x1 * y2 + x2 * y1) * pow(1 + t, -1, P) % P, (y1 * y2 + x1 * x2) * pow(1 - t, -1, P) % P


def _mul(k: int, point: tuple[int, int]) -> tuple[int, int]:
    out = IDENTITY
    while k:
        if k & 1:
            out = _add(out, point)
        point = _add(point, point)
        k >>= 1
    return out


def _x_for(y: int) -> int | None:
    """An x with (x, y) on the curve, or None (RFC 8032 §5.1.3 square root)."""
    x2 = (y * y - 1) * pow(D * y * y + 1, -1, P) % P
    x = pow(x2, (P + 3) // 8, P)
    if x * x % P != x2:
        x = x * SQRT_M1 % P
    return x if x * x % P == x2 else None


def _order(point: tuple[int, int]) -> int:
    return next(n for n in (1, 2, 4, 8) if _mul(n, point) == IDENTITY)


def torsion_points() -> list[tuple[int, int]]:
    """All 8 small-order points: [L]·Q is a torsion point for any Q; one of order 8 generates them."""
    while True:
        y = secrets.randbelow(P)
        x = _x_for(y)
        if x is not None:
            t = _mul(L, (x, y))
            if _order(t) == 8:
                return [_mul(k, t) for k in range(8)]


def encode(y: int, x_sign: int = 0) -> bytes:
    return (y | x_sign << 255).to_bytes(32, "little")


def every_small_order_encoding() -> dict[str, bytes]:
    """Each torsion point canonically, with a 'negative zero' x sign, and as y + p where y + p < 2^255."""
    out = {}
    for x, y in torsion_points():
        name = f"order{_order((x, y))}-y{y % 10**6}"
        out[f"{name}-canonical-sign{x & 1}"] = encode(y, x & 1)
        if x == 0:
            out[f"{name}-negative-zero-x"] = encode(y, 1)
        if y + P < 2**255:
            for sign in (0, 1):
                out[f"{name}-plus-p-sign{sign}"] = encode(y + P, sign)
    return out


def _y_of_order(n: int) -> int:
    return next(y for x, y in torsion_points() if _order((x, y)) == n)


def _y_not_on_curve() -> int:
    return next(y for y in range(2, 100) if _x_for(y) is None)


# -- key makers ----------------------------------------------------------------------------------


def okp(raw: bytes) -> dict[str, Any]:
    return {"kty": "OKP", "crv": "Ed25519", "x": b64u(raw), "alg": "Ed25519"}


def _modulus() -> int:
    return rsa.generate_private_key(65537, 2048).public_key().public_numbers().n


def rsa_jwk(n: int, e: int = 65537) -> dict[str, Any]:
    return {"kty": "RSA", "n": b64u(n.to_bytes((n.bit_length() + 7) // 8, "big")),
            "e": b64u(e.to_bytes((e.bit_length() + 7) // 8, "big")), "alg": "PS256"}


def _multiple_of(prime: int) -> int:
    """An odd 2048-bit modulus with ``prime`` as a factor."""
    m = _modulus()
    m -= m % prime
    return m + prime if m % 2 == 0 else m


SMALL_ORDER = ("jwk_ed25519_small_order", "the Ed25519 key is a small-order point: it would accept a forged signature")
NON_CANONICAL = ("jwk_ed25519_non_canonical", "the Ed25519 key is not canonically encoded (y must be below 2^255 - 19)")
NOT_ON_CURVE = ("jwk_ed25519_not_on_curve", "the Ed25519 key is not a point on the curve")
EVEN = ("jwk_rsa_modulus", "the RSA modulus is even")
SMALL_FACTOR = ("jwk_rsa_modulus", "the RSA modulus has a small prime factor")
EXPONENT = ("jwk_rsa_exponent", "RSA public exponent must be 65537")

#: key → None (accepted) or (reason, detail). Shared by the pure check and the registration gate.
KEYS: list[tuple[str, Callable[[], dict[str, Any]], tuple[str, str] | None]] = [
    ("ed25519-good", lambda: OKPKey.generate_key("Ed25519").as_dict(private=False) | {"alg": "Ed25519"}, None),
    ("ed25519-identity", lambda: okp(encode(1)), SMALL_ORDER),
    ("ed25519-identity-negative-zero-x", lambda: okp(encode(1, 1)), SMALL_ORDER),
    ("ed25519-order-2", lambda: okp(encode(P - 1)), SMALL_ORDER),
    ("ed25519-order-4", lambda: okp(encode(0, 1)), SMALL_ORDER),
    ("ed25519-order-8", lambda: okp(encode(_y_of_order(8))), SMALL_ORDER),
    ("ed25519-order-8-other-y", lambda: okp(encode(P - _y_of_order(8), 1)), SMALL_ORDER),
    ("ed25519-y-equals-p", lambda: okp(encode(P)), SMALL_ORDER),
    ("ed25519-y-equals-p-plus-1", lambda: okp(encode(P + 1)), SMALL_ORDER),
    ("ed25519-y-non-canonical", lambda: okp(encode(P + 7)), NON_CANONICAL),
    ("ed25519-y-all-ones", lambda: okp(b"\xff" * 32), NON_CANONICAL),
    ("ed25519-not-on-curve", lambda: okp(encode(_y_not_on_curve())), NOT_ON_CURVE),
    ("rsa-good", lambda: rsa_jwk(_modulus()), None),
    ("rsa-even-modulus", lambda: rsa_jwk(_modulus() - 1), EVEN),
    ("rsa-factor-3", lambda: rsa_jwk(_multiple_of(3)), SMALL_FACTOR),
    ("rsa-factor-9973", lambda: rsa_jwk(_multiple_of(9973)), SMALL_FACTOR),
    ("rsa-e-3", lambda: rsa_jwk(_modulus(), 3), EXPONENT),
    ("rsa-e-17", lambda: rsa_jwk(_modulus(), 17), EXPONENT),
    ("rsa-e-65539", lambda: rsa_jwk(_modulus(), 65539), EXPONENT),
    ("rsa-e-2-pow-32-plus-1", lambda: rsa_jwk(_modulus(), 2**32 + 1), EXPONENT),
    ("ec-p256-good", lambda: ECKey.generate_key("P-256").as_dict(private=False) | {"alg": "ES256"}, None),
    ("ec-p384-good", lambda: ECKey.generate_key("P-384").as_dict(private=False) | {"alg": "ES384"}, None),
]


def _off_curve(crv: str, alg: str) -> dict[str, Any]:
    a, b = ECKey.generate_key(crv).as_dict(private=False), ECKey.generate_key(crv).as_dict(private=False)
    return {**a, "y": b["y"], "alg": alg}


#: EC points not on their curve never get as far as the strength check: the import refuses them
#: (cryptography checks the point), so the gate answers ``jwk_invalid``. P-256 and P-384 have
#: cofactor 1, so every point on them has the full prime order.
UNPARSEABLE = [
    ("ec-p256-off-curve", lambda: _off_curve("P-256", "ES256")),
    ("ec-p384-off-curve", lambda: _off_curve("P-384", "ES384")),
]


@pytest.mark.parametrize(("make", "expected"), [k[1:] for k in KEYS], ids=[k[0] for k in KEYS])
def test_pure_check(make, expected):
    key = import_jwk({k: v for k, v in make().items() if k != "alg"})
    if expected is None:
        check_public_key(key.raw_value)
    else:
        with pytest.raises(WeakKey) as caught:
            check_public_key(key.raw_value)
        assert (caught.value.reason, caught.value.detail) == expected


@pytest.mark.parametrize(("make", "expected"), [k[1:] for k in KEYS], ids=[k[0] for k in KEYS])
def test_registration_gate(make, expected):
    jwk = make()
    if expected is None:
        assert validate_client_jwk(jwk)["alg"] == jwk["alg"]
    else:
        with pytest.raises(InvalidClientMetadata) as caught:
            validate_client_jwk(jwk)
        assert (caught.value.reason, caught.value.detail) == expected


@pytest.mark.parametrize("make", [u[1] for u in UNPARSEABLE], ids=[u[0] for u in UNPARSEABLE])
def test_points_off_the_curve_do_not_import(make):
    jwk = make()
    with pytest.raises(ValueError):
        import_jwk({k: v for k, v in jwk.items() if k != "alg"})
    with pytest.raises(InvalidClientMetadata) as caught:
        validate_client_jwk(jwk)
    assert (caught.value.reason, caught.value.detail) == ("jwk_invalid", "the key could not be parsed (bad coordinates or modulus)")


def test_every_encoding_of_every_small_order_point_is_refused():
    """The 8 torsion points, found here by arithmetic, in all their 32-byte encodings (14 in all)."""
    encodings = every_small_order_encoding()
    assert len(torsion_points()) == len(set(torsion_points())) == 8
    assert len(encodings) == 14
    refused = {}
    for name, raw in encodings.items():
        try:
            validate_client_jwk(okp(raw))
            refused[name] = None
        except InvalidClientMetadata as exc:
            refused[name] = exc.reason
    assert refused == dict.fromkeys(encodings, "jwk_ed25519_small_order")


# -- the admin API --------------------------------------------------------------------------------

ADMIN_CASES = [k for k in KEYS if k[0] in ("ed25519-identity", "ed25519-order-8", "ed25519-y-non-canonical",
                                           "rsa-even-modulus", "rsa-factor-9973", "rsa-e-3")]


@pytest.mark.parametrize(("make", "expected"), [k[1:] for k in ADMIN_CASES], ids=[k[0] for k in ADMIN_CASES])
def test_admin_api_refuses_weak_keys(broker, make, expected):
    r = broker.http.post("/admin/clients", json=meta("svc", jwks={"keys": [make()]}), headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request(expected[1])
    assert broker.http.get("/admin/clients/svc", headers=admin_headers(broker)).status_code == 404


# -- end to end: the identity point and a constant signature -------------------------------------

#: A valid Ed25519 signature (R, S) under the identity key A for *every* message: R = identity,
#: S = 0, because [S]B = R + [k]A holds for any k when A and R are the identity.
CONSTANT_SIGNATURE = encode(1) + bytes(32)


def forged_assertion(client_id: str, now: float) -> str:
    header = {"alg": "Ed25519", "kid": "weak", "typ": "client-authentication+jwt"}
    claims = good(client_id, now=now, jti=uuid.uuid4().hex)
    signing_input = b64u(json.dumps(header)) + "." + b64u(json.dumps(claims))
    return signing_input + "." + b64u(CONSTANT_SIGNATURE)


def identity_metadata(client_id: str) -> dict[str, Any]:
    return meta(client_id, jwks={"keys": [okp(encode(1)) | {"kid": "weak"}]}, default_scopes=["read"])


def test_without_the_check_the_identity_key_gives_anyone_a_token(broker, monkeypatch):
    """Why the check exists: with it switched off, two different assertions carrying the same
    constant signature both get a token."""
    monkeypatch.setattr("app.oauth.clients.check_public_key", lambda key: None)
    r = broker.http.post("/admin/clients", json=identity_metadata("victim"), headers=admin_headers(broker))
    assert r.status_code == 201, r.text
    broker.app.state.directory.invalidate()
    first, second = forged_assertion("victim", broker.clock.now), forged_assertion("victim", broker.clock.now)
    assert first.rsplit(".", 1)[1] == second.rsplit(".", 1)[1] and first != second
    assert_token(broker.token(form(first)))
    assert_token(broker.token(form(second)))


def test_identity_key_is_refused_at_registration(broker):
    r = broker.http.post("/admin/clients", json=identity_metadata("victim"), headers=admin_headers(broker))
    assert (r.status_code, r.json()) == bad_request(SMALL_ORDER[1])
    broker.app.state.directory.invalidate()
    assert_invalid_client(broker.token(form(forged_assertion("victim", broker.clock.now))))


def test_identity_key_stored_before_the_check_is_never_used(broker):
    """A record written before this check existed (straight into the registry): the client's keys
    are unusable, loudly, and the forged assertion is refused."""
    record = ClientRecord(client_id="victim", jwks={"keys": [okp(encode(1)) | {"kid": "weak", "use": "sig"}]},
                          scopes=("read",), default_scopes=("read",), audiences=(RS1,), default_audience=RS1)
    broker.call(broker.app.state.registry.put, record)
    broker.app.state.directory.invalidate()
    assert_invalid_client(broker.token(form(forged_assertion("victim", broker.clock.now))))
    assert [(e["client_id"], e["error"]) for e in broker.logs() if e["event"] == "client.keys_unusable"] == [
        ("victim", "WeakKey")]


def test_identity_key_fetched_from_a_jwks_uri_is_never_used(tmp_path, clock):
    with KeyServer() as server, Broker(jwks_settings(tmp_path), clock) as b:
        server.keys = [okp(encode(1)) | {"kid": "weak"}]
        register_uri_client(b, TestClient("victim", alg="Ed25519"), server.url)
        assert_invalid_client(b.token(form(forged_assertion("victim", b.clock.now))))
        assert server.count == 1
        assert [e["reason"] for e in b.logs() if e["event"] == "jwks_uri.fetch_failed"] == [
            "key_invalid:jwk_ed25519_small_order"]


def test_fetched_set_with_one_weak_key_is_refused_whole():
    good_key = OKPKey.generate_key("Ed25519").as_dict(private=False) | {"alg": "Ed25519", "kid": "good"}
    body = json.dumps({"keys": [good_key, rsa_jwk(_modulus(), 3) | {"kid": "weak"}]}).encode()
    with pytest.raises(JwksFetchError) as caught:
        parse_fetched_jwks(body, default_alg=None)
    assert caught.value.reason == "key_invalid:jwk_rsa_exponent"
