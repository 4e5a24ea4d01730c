"""RFC 9449 §4.3 proof checks of the shared ``token_broker_jose.dpop`` (broker, client, verifier).

Each row builds one proof that breaks one rule and expects the exact error and reason; the
endpoint-level tables (broker and verifier) check the same rules through HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from joserfc import jws
from joserfc.jwk import RSAKey

from tests.helpers import raw
from token_broker_jose import dpop
from token_broker_jose.jose import generate_private_key

NOW = 1_800_000_000
HTU = "https://broker.example/token"
TOKEN = "eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJ4In0.c2ln"


def b64u(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@pytest.fixture(scope="module")
def key() -> Any:
    return generate_private_key("ES256")


def public(key: Any) -> dict[str, Any]:
    return {k: v for k, v in key.as_dict(private=False).items() if k in ("kty", "crv", "x", "y", "n", "e")}


def proof(key: Any, header: dict[str, Any] | None = None, drop: tuple[str, ...] = (), **claims: Any) -> str:
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public(key), **(header or {})}
    body = {"jti": "j-1", "htm": "POST", "htu": HTU, "iat": NOW, **claims}
    for name in drop:
        body.pop(name, None)
    head = {k: v for k, v in head.items() if v is not None}
    return jws.serialize_compact(head, json.dumps(body).encode(), key, algorithms=[head.get("alg", "ES256")])


def verify(text: str, **options: Any) -> dpop.DPoPProof:
    return dpop.verify_proof(text, htm=options.pop("htm", "POST"), htu=options.pop("htu", HTU), now=NOW, **options)


def test_create_and_verify_round_trip(key) -> None:
    text = dpop.create_proof(key, alg="ES256", htm="GET", htu="https://api.example/items?page=2#x",
                             access_token=TOKEN, nonce="n-1", now=NOW, jti="abc")
    got = verify(text, htm="GET", htu="https://api.example/items", access_token=TOKEN)
    assert got == dpop.DPoPProof(key.thumbprint(), "abc", NOW, "ES256", "n-1", dpop.access_token_hash(TOKEN))


@pytest.mark.parametrize("alg", ["ES256", "ES384", "PS256", "RS256", "Ed25519"])
def test_every_algorithm_binds_its_thumbprint(alg) -> None:
    k = generate_private_key(alg)
    got = verify(dpop.create_proof(k, alg=alg, htm="POST", htu=HTU, now=NOW))
    assert got.jkt == k.thumbprint() and got.alg == alg


def test_eddsa_is_the_ed25519_synonym() -> None:
    k = generate_private_key("Ed25519")
    with warnings.catch_warnings():  # joserfc warns when signing with the deprecated name (RFC 9864)
        warnings.simplefilter("ignore")
        text = proof(k, {"alg": "EdDSA"})
    assert verify(text).alg == "Ed25519"


def test_thumbprint_is_rfc7638() -> None:
    # RFC 7638 §3.1's example key and thumbprint.
    jwk = {"kty": "RSA", "e": "AQAB", "alg": "RS256", "kid": "2011-04-29", "n": (
        "0vx7agoebGcQSuuPiLJXZptN9nndrQmbXEps2aiAFbWhM78LhWx4cbbfAAtVT86zwu1RK7aPFFxuhDR1L6tSoc_BJECPebWKRXjBZCiFV4n3o"
        "knjhMstn64tZ_2W-5JsGY4Hc5n9yBXArwl93lqt7_RN5w6Cf0h4QyQ5v-65YGjQR0_FDW2QvzqY368QQMicAtaSqzs8KJZgnYb9c7d0zgdAZH"
        "zu6qMQvRL5hajrn1n91CbOpbISD08qNLyrdkt-bFTWhAI4vMQFh6WeZu0fM4lFd2NcRwr3XPksINHaQ-G_xBniIqbw0Ls1jF44-csFCur-kEgU"
        "8awapJzKnqDKgw")}
    assert dpop.jwk_thumbprint(jwk) == "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs"


def _tamper_signature(text: str) -> str:
    head, body, sig = text.split(".")
    return f"{head}.{body}.{sig[:-4]}AAAA"


def _hs256(key: Any) -> str:
    head = b64u(json.dumps({"typ": "dpop+jwt", "alg": "HS256", "jwk": public(key)}).encode())
    body = b64u(json.dumps({"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW}).encode())
    sig = hmac.new(b"secret", f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{b64u(sig)}"


def _none(key: Any) -> str:
    head = b64u(json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": public(key)}).encode())
    body = b64u(json.dumps({"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW}).encode())
    return f"{head}.{body}.{b64u(b'x')}"  # a signature part, so the alg (not the syntax) is what is refused


def _other_key_signed(key: Any) -> str:
    other = generate_private_key("ES256")
    return jws.serialize_compact({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(key)},
                                 json.dumps({"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW}).encode(), other,
                                 algorithms=["ES256"])


def _duplicate_member(key: Any) -> str:
    head = b64u(json.dumps({"typ": "dpop+jwt", "alg": "ES256", "jwk": public(key)}).encode())
    body = b64u(b'{"jti":"a","jti":"b","htm":"POST","htu":"' + HTU.encode() + b'","iat":1800000000}')
    sig = jws.serialize_compact({"alg": "ES256"}, b"x", key, algorithms=["ES256"]).split(".")[2]
    return f"{head}.{body}.{sig}"


def _rsa_jwk_proof(n_bits: int, e: int) -> Callable[[Any], str]:
    """A PS256 proof whose jwk has an ``n_bits`` modulus and exponent ``e``: a random odd modulus (no
    private key): only the key's shape is checked, and before the fix its signature check ran
    with it, costing a modular exponentiation as long as ``e`` (a 3072-bit one: ~60x the work of
    an ordinary verification, for any caller of a resource server)."""
    def build(_key: Any) -> str:
        n = secrets.randbits(n_bits) | 1 | (1 << (n_bits - 1))
        jwk = {"kty": "RSA", "n": b64u(n.to_bytes(n_bits // 8, "big")),
               "e": b64u(e.to_bytes((e.bit_length() + 7) // 8, "big"))}
        head = b64u(json.dumps({"typ": "dpop+jwt", "alg": "PS256", "jwk": jwk}).encode())
        body = b64u(json.dumps({"jti": "j", "htm": "POST", "htu": HTU, "iat": NOW}).encode())
        signature = b64u(bytes([1]) * (n_bits // 8))
        return f"{head}.{body}.{signature}"
    return build


def _rsa_exponent_3(_key: Any) -> str:
    """A real key with e = 3, correctly signed: refused as the broker refuses it for a client key."""
    rsa_key = RSAKey.import_key(rsa.generate_private_key(3, 2048))
    return proof(rsa_key, {"alg": "PS256"})


def _padded(member: str) -> str:
    """A base64url integer one octet longer: a leading zero (the same number, another string)."""
    return b64u(b"\x00" + base64.urlsafe_b64decode(member + "=="))


def _stray_bits(member: str) -> str:
    """The same octets with the unused low bits of the last base64url character set (a 32-octet
    coordinate has 43 characters: the last one carries 2 unused bits). Lenient decoders read the
    same key; the string, and so the thumbprint, differ."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    last = alphabet.index(member[-1])
    return member[:-1] + alphabet[last | 0b11 if last & 0b11 != 0b11 else last & ~0b11]


def _by_hand(key: Any, header: dict[str, Any]) -> str:
    """A proof with extra header members joserfc would refuse to write (an unknown ``crit``)."""
    head = {"typ": "dpop+jwt", "alg": "ES256", "jwk": public(key), **header}
    body = {"jti": "j-1", "htm": "POST", "htu": HTU, "iat": NOW}
    return raw(json.dumps(head), json.dumps(body), key, "ES256")


def _rsa_padded_n(_key: Any) -> str:
    rsa_key = generate_private_key("PS256")
    jwk = public(rsa_key)
    return proof(rsa_key, {"alg": "PS256", "jwk": {**jwk, "n": _padded(jwk["n"])}})


def test_create_proof_leaves_the_userinfo_out_of_htu(key) -> None:
    """A URL with credentials in it: the proof names the URL without them (servers refuse userinfo
    in htu, and a signed proof that servers may log is no place for a password)."""
    text = dpop.create_proof(key, alg="ES256", htm="GET", htu="https://alice:s3cret@api.example/x?q=1", now=NOW)
    claims = json.loads(base64.urlsafe_b64decode(text.split(".")[1] + "=="))
    assert claims["htu"] == "https://api.example/x"


# (id, build(key) -> proof, verify options, reason)
REFUSALS: list[Any] = [
    ("jwk-rsa-huge-exponent", _rsa_jwk_proof(3072, secrets.randbits(3071) | 1 | (1 << 3070)), {}, "dpop_jwk_invalid"),
    ("jwk-rsa-exponent-3", _rsa_exponent_3, {}, "dpop_jwk_invalid"),
    ("jwk-rsa-modulus-8192", _rsa_jwk_proof(8192, 65537), {}, "dpop_jwk_invalid"),
    ("jwk-rsa-modulus-1024", _rsa_jwk_proof(1024, 65537), {}, "dpop_jwk_invalid"),
    ("not-a-jws", lambda k: "abc", {}, "dpop_malformed"),
    ("two-parts", lambda k: "a.b", {}, "dpop_malformed"),
    ("too-long", lambda k: "a" * 9000 + ".b.c", {}, "dpop_malformed"),
    ("typ-jwt", lambda k: proof(k, {"typ": "JWT"}), {}, "dpop_typ_invalid"),
    ("typ-missing", lambda k: proof(k, {"typ": None}), {}, "dpop_typ_invalid"),
    ("alg-none", _none, {}, "dpop_alg_not_allowed"),
    ("alg-hs256", _hs256, {}, "dpop_alg_not_allowed"),
    ("alg-not-in-list", lambda k: proof(k), {"algs": ("RS256",)}, "dpop_alg_not_allowed"),
    ("jwk-missing", lambda k: proof(k, {"jwk": None}), {}, "dpop_jwk_missing"),
    ("jwk-private", lambda k: proof(k, {"jwk": k.as_dict(private=True)}), {}, "dpop_jwk_private"),
    ("jwk-symmetric", lambda k: proof(k, {"jwk": {"kty": "oct", "k": "c2VjcmV0"}}), {}, "dpop_jwk_private"),
    ("jwk-wrong-type", lambda k: proof(k, {"jwk": public(generate_private_key("RS256"))}), {}, "dpop_jwk_invalid"),
    ("jwk-bad-point", lambda k: proof(k, {"jwk": {**public(k), "x": b64u(b"\x01" * 32)}}), {}, "dpop_jwk_invalid"),
    ("jwk-ec-x-leading-zero", lambda k: proof(k, {"jwk": {**public(k), "x": _padded(public(k)["x"])}}), {},
     "dpop_jwk_invalid"),
    ("jwk-ec-y-leading-zero", lambda k: proof(k, {"jwk": {**public(k), "y": _padded(public(k)["y"])}}), {},
     "dpop_jwk_invalid"),
    ("jwk-rsa-n-leading-zero", _rsa_padded_n, {}, "dpop_jwk_invalid"),
    ("jwk-base64-stray-bits", lambda k: proof(k, {"jwk": {**public(k), "x": _stray_bits(public(k)["x"])}}), {},
     "dpop_jwk_invalid"),
    ("crit", lambda k: _by_hand(k, {"crit": ["x-unknown"], "x-unknown": 1}), {}, "dpop_crit"),
    ("crit-b64", lambda k: _by_hand(k, {"crit": ["b64"], "b64": True}), {}, "dpop_crit"),
    ("signature-other-key", _other_key_signed, {}, "dpop_signature_invalid"),
    ("signature-tampered", lambda k: _tamper_signature(proof(k)), {}, "dpop_signature_invalid"),
    ("duplicate-claim", _duplicate_member, {}, "dpop_signature_invalid"),
    ("jti-missing", lambda k: proof(k, drop=("jti",)), {}, "dpop_jti_invalid"),
    ("jti-not-string", lambda k: proof(k, jti=5), {}, "dpop_jti_invalid"),
    ("jti-too-long", lambda k: proof(k, jti="j" * 300), {}, "dpop_jti_invalid"),
    ("htm-missing", lambda k: proof(k, drop=("htm",)), {}, "dpop_htm_invalid"),
    ("htm-wrong", lambda k: proof(k, htm="GET"), {}, "dpop_htm_mismatch"),
    ("htm-lowercase", lambda k: proof(k, htm="post"), {}, "dpop_htm_mismatch"),
    ("htu-missing", lambda k: proof(k, drop=("htu",)), {}, "dpop_htu_invalid"),
    ("htu-other-path", lambda k: proof(k, htu="https://broker.example/revoke"), {}, "dpop_htu_mismatch"),
    ("htu-other-host", lambda k: proof(k, htu="https://evil.example/token"), {}, "dpop_htu_mismatch"),
    ("htu-http", lambda k: proof(k, htu="http://broker.example/token"), {}, "dpop_htu_mismatch"),
    ("htu-relative", lambda k: proof(k, htu="/token"), {}, "dpop_htu_mismatch"),
    ("iat-missing", lambda k: proof(k, drop=("iat",)), {}, "dpop_iat_invalid"),
    ("iat-string", lambda k: proof(k, iat=str(NOW)), {}, "dpop_iat_invalid"),
    ("iat-future", lambda k: proof(k, iat=NOW + 60), {}, "dpop_iat_in_future"),
    ("iat-old", lambda k: proof(k, iat=NOW - 120), {}, "dpop_iat_too_old"),
    ("nonce-not-string", lambda k: proof(k, nonce=1), {}, "dpop_nonce_invalid"),
    ("ath-missing", lambda k: proof(k), {"access_token": TOKEN}, "dpop_ath_mismatch"),
    ("ath-other-token", lambda k: proof(k, ath=dpop.access_token_hash(TOKEN + "x")), {"access_token": TOKEN},
     "dpop_ath_mismatch"),
    ("ath-non-ascii", lambda k: proof(k, ath="é"), {"access_token": TOKEN}, "dpop_ath_mismatch"),
]


@pytest.mark.parametrize(("build", "options", "reason"), [r[1:] for r in REFUSALS], ids=[r[0] for r in REFUSALS])
def test_refused(key, build, options, reason) -> None:
    with pytest.raises(dpop.InvalidDPoPProof) as caught:
        verify(build(key), **options)
    assert (type(caught.value), caught.value.error, caught.value.reason) == (dpop.InvalidDPoPProof,
                                                                             "invalid_dpop_proof", reason)


@pytest.mark.parametrize(("claims", "reason"), [({}, "dpop_nonce_required"), ({"nonce": "old"}, "dpop_nonce_stale")],
                         ids=["missing", "stale"])
def test_nonce_required(key, claims, reason) -> None:
    with pytest.raises(dpop.UseDPoPNonce) as caught:
        verify(proof(key, **claims), nonce_ok=lambda n: n == "current")
    assert (caught.value.error, caught.value.reason) == ("use_dpop_nonce", reason)
    assert verify(proof(key, nonce="current"), nonce_ok=lambda n: n == "current").nonce == "current"


@pytest.mark.parametrize(("url", "normal"), [
    ("https://Broker.Example/token", "https://broker.example/token"),
    ("HTTPS://broker.example:443/token", "https://broker.example/token"),
    ("http://broker.example:80/token?x=1#f", "http://broker.example/token"),
    ("https://broker.example:8443/token", "https://broker.example:8443/token"),
    ("https://broker.example", "https://broker.example/"),
    ("https://[::1]:8443/t", "https://[::1]:8443/t"),
    ("ftp://broker.example/token", None),
    ("https://user:pw@broker.example/token", None),
    ("/token", None),
    ("https://broker.example:99999/token", None),
], ids=["host-case", "default-https-port", "default-http-port-query-fragment", "other-port", "empty-path", "ipv6",
        "ftp", "credentials", "relative", "bad-port"])
def test_normalize_htu(url, normal) -> None:
    assert dpop.normalize_htu(url) == normal


def test_equivalent_htu_accepted(key) -> None:
    assert verify(proof(key, htu="https://BROKER.example:443/token?q=1")).jti == "j-1"


def test_iat_inside_window_accepted(key) -> None:
    assert verify(proof(key, iat=NOW - 60)).iat == NOW - 60
    assert verify(proof(key, iat=NOW + 5)).iat == NOW + 5
