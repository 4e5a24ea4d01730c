"""Client assertion rules (docs/attack-matrix.md: "Assertion syntax and JOSE header", "Signatures and keys",
"Assertion claims").

Each negative row expects the byte-identical 401 invalid_client and, in the log, the stable
reason code the broker gives for it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import threading
from collections.abc import Callable
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from app.config import Settings
from tests.conftest import Broker
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import DROP, ISS, TOKEN_URL, TestClient, b64u, form, good, padded_assertion, raw, sign

NOW = 1_800_000_000


@pytest.fixture
def c1(broker) -> TestClient:
    client = TestClient("c1", alg="ES256", kid="c1-1")
    broker.register(client)
    return client


@pytest.fixture
def c2(broker) -> TestClient:
    client = TestClient("c2", alg="PS256", kid="c2-1")
    broker.register(client)
    return client


def last_reason(broker: Broker) -> str | None:
    for event in reversed(broker.logs()):
        if event.get("event") == "token.rejected":
            return event.get("reason")
    return None


def reject(broker: Broker, assertion: str, reason: str | None = None, **params: Any) -> None:
    response = broker.token(form(assertion, **params))
    logged = last_reason(broker)
    # The outer syntax (size, three base64url parts) is answered specifically; the rest generically.
    assert_invalid_client(response, logged)
    if reason is not None:
        assert logged == reason


def c1_raw(c1: TestClient, header: str, payload: str) -> str:
    return raw(header, payload, c1.key, "ES256")


def claims_json(**overrides: Any) -> str:
    return json.dumps(good("c1", now=NOW, **overrides))


# -- alg none (attack matrix: `alg-none`) ----------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
@pytest.mark.parametrize("sig", ["", "c2lnbmF0dXJl"], ids=["empty-sig", "junk-sig"])
def test_alg_none(broker, c1, alg, sig):
    token = b64u(json.dumps({"alg": alg, "kid": "c1-1"})) + "." + b64u(claims_json()) + "." + sig
    reject(broker, token, "assertion_malformed" if not sig else "alg_not_allowed")


# -- HMAC keyed with the client's public key (attack matrix: `hmac-key-confusion`) -----------------


def _public_forms(c2: TestClient) -> dict[str, bytes]:
    pub = c2.key.raw_value.public_key() if c2.key.is_private else c2.key.raw_value
    return {
        "pem": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "jwk": json.dumps(c2.public_jwk()).encode(),
        "n": base64.urlsafe_b64decode(c2.public_jwk()["n"] + "=="),
    }


@pytest.mark.parametrize("alg,digest", [("HS256", hashlib.sha256), ("HS384", hashlib.sha384), ("HS512", hashlib.sha512)])
@pytest.mark.parametrize("form_name", ["pem", "der", "jwk", "n"])
def test_hmac_confusion(broker, c2, alg, digest, form_name):
    secret = _public_forms(c2)[form_name]
    signing_input = b64u(json.dumps({"alg": alg, "kid": "c2-1"})) + "." + b64u(json.dumps(good("c2", now=NOW)))
    sig = hmac.new(secret, signing_input.encode(), digest).digest()
    reject(broker, signing_input + "." + b64u(sig), "alg_not_allowed")


# -- alg outside the client's registered alg or the allow-list (attack matrix: `alg-not-registered`) ---


def test_rs256_with_ps256_registered_key(broker, c2):
    reject(broker, sign({"alg": "RS256", "kid": "c2-1"}, good("c2", now=NOW), c2.key), "alg_not_allowed")


@pytest.mark.parametrize(
    "alg,key_factory",
    [
        ("ES384", lambda: ECKey.generate_key("P-384")),
        ("PS512", lambda: RSAKey.generate_key(2048)),
        ("EdDSA", lambda: OKPKey.generate_key("Ed25519")),
        ("Ed25519", lambda: OKPKey.generate_key("Ed25519")),
    ],
    ids=["ES384", "PS512", "EdDSA", "Ed25519"],
)
def test_other_alg_for_es256_client(broker, c1, alg, key_factory):
    signing_input = b64u(json.dumps({"alg": alg, "kid": "c1-1"})) + "." + b64u(claims_json())
    sig = JWSRegistry.algorithms[alg].sign(signing_input.encode(), key_factory()) if alg in JWSRegistry.algorithms else b"x" * 64
    expected = "alg_not_allowed"
    reject(broker, signing_input + "." + b64u(sig), expected)


def test_es256k_header_is_rejected(broker, c1):
    reject(broker, c1_raw(c1, '{"alg":"ES256K","kid":"c1-1"}', claims_json()), "alg_not_allowed")


# -- header members outside {alg, kid, typ, x5t, x5t#S256} (attack matrix: `embedded-jwk`, `jku-x5u-x5c`,
# `header-members-allowlist`; x5t and x5t#S256 select a key: tests/test_compat.py) ---


@pytest.mark.parametrize(
    "extra",
    [
        {"jwk": {"kty": "EC", "crv": "P-256", "x": "AAAA", "y": "AAAA"}},
        {"jku": "http://127.0.0.1:1/jwks"},
        {"x5u": "http://127.0.0.1:1/cert"},
        {"x5c": ["MIIB"]},
        {"x-custom": "1"},
        {"zip": "DEF"},
        {"enc": "A128GCM"},
        {"cty": "JWT"},
        {"b64": True},
        {"crit": ["exp"]},
    ],
    ids=["jwk", "jku", "x5u", "x5c", "x-custom", "zip", "enc", "cty", "b64", "crit"],
)
def test_forbidden_header_members_signed_by_real_key(broker, c1, extra):
    header = json.dumps({"alg": "ES256", "kid": "c1-1", **extra})
    reject(broker, c1_raw(c1, header, claims_json()), "header_param_forbidden")


def test_embedded_jwk_from_attacker(broker, c1):
    attacker = ECKey.generate_key("P-256")
    for header in ({"alg": "ES256", "jwk": attacker.as_dict(private=False)},
                   {"alg": "ES256", "kid": "c1-1", "jwk": attacker.as_dict(private=False)}):
        reject(broker, sign(header, good("c1", now=NOW), attacker), "header_param_forbidden")


def test_jku_and_x5u_are_never_fetched(broker, c1):
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/jwks"
        attacker = ECKey.generate_key("P-256")
        for member in ("jku", "x5u"):
            for key in (attacker, c1.key):
                reject(broker, sign({"alg": "ES256", "kid": "c1-1", member: url}, good("c1", now=NOW), key), "header_param_forbidden")
    finally:
        server.shutdown()
        server.server_close()
    assert hits == []


# -- kid abuse (attack matrix: `kid-abuse`) --------------------------------------------------------


def test_kid_of_another_client_is_not_found(broker, c1, c2):
    reject(broker, sign({"alg": "PS256", "kid": "c2-1"}, good("c1", now=NOW), c2.key), "kid_unknown")
    # Same alg, the other client's kid: the key is looked up only among c1's keys.
    other = TestClient("c5", alg="ES256", kid="c5-1")
    broker.register(other)
    reject(broker, sign({"alg": "ES256", "kid": "c5-1"}, good("c1", now=NOW), other.key), "kid_unknown")


def test_shared_kid_lookup_is_scoped_per_client(broker, c1):
    twin = TestClient("twin", alg="ES256", kid="c1-1")  # same kid string as c1's key
    broker.register(twin)
    reject(broker, sign({"alg": "ES256", "kid": "c1-1"}, good("c1", now=NOW), twin.key), "signature_invalid")
    assert_token(broker.token(form(twin.assertion(NOW))))


@pytest.mark.parametrize(
    "kid_json",
    ['"../../k"', '"\' OR 1=1--"', '"*)(uid=*"', '"a\\u0000b"', '"' + "k" * 10_000 + '"', "1", "null", "[]"],
    ids=["path", "sql", "ldap", "nul", "10kb", "int", "null", "list"],
)
def test_kid_abuse(broker, c1, kid_json):
    token = c1_raw(c1, '{"alg":"ES256","kid":' + kid_json + "}", claims_json())
    reject(broker, token)


# -- crit, b64, non-object headers (attack matrix: `crit-header`, `unencoded-payload`, `header-not-an-object`) ---


@pytest.mark.parametrize(
    "header",
    [
        '{"alg":"ES256","kid":"c1-1","crit":["x-bork"],"x-bork":1}',
        '{"alg":"ES256","kid":"c1-1","crit":["exp"],"exp":1}',
        '{"alg":"ES256","kid":"c1-1","crit":[]}',
        '{"alg":"ES256","kid":"c1-1","crit":["alg"]}',
        '{"alg":"ES256","kid":"c1-1","crit":null}',
        '{"alg":"ES256","kid":"c1-1","crit":1}',
        '{"alg":"ES256","kid":"c1-1","crit":"kid"}',
        '{"alg":"ES256","kid":"c1-1","crit":{"kid":1}}',
    ],
    ids=["unknown", "exp", "empty", "alg", "null", "int", "string", "object"],
)
def test_crit(broker, c1, header):
    reject(broker, c1_raw(c1, header, claims_json()), "header_param_forbidden")


def test_unencoded_payload_b64_false(broker, c1):
    header = '{"alg":"ES256","b64":false,"crit":["b64"]}'
    payload = '{"iss":"c1","sub":"c1","aud":"urn:x"}'
    h64 = b64u(header)
    sig = JWSRegistry.algorithms["ES256"].sign((h64 + "." + payload).encode(), c1.key)
    reject(broker, h64 + "." + payload + "." + b64u(sig), "assertion_malformed")


@pytest.mark.parametrize(
    "header_bytes",
    [b'"alg"', b'["alg"]', b"1", b"null", b'\xef\xbb\xbf{"alg":"ES256","kid":"c1-1"}', b'{"alg":"ES256","kid":"c1-\xff"}',
     '{"alg":"ES256"}'.encode("utf-16")],
    ids=["string", "list", "int", "null", "bom", "invalid-utf8", "utf16"],
)
def test_non_object_or_badly_encoded_header(broker, c1, header_bytes):
    h64 = base64.urlsafe_b64encode(header_bytes).rstrip(b"=").decode()
    signing_input = h64 + "." + b64u(claims_json())
    sig = JWSRegistry.algorithms["ES256"].sign(signing_input.encode(), c1.key)
    reject(broker, signing_input + "." + b64u(sig), "header_invalid")


# -- typ (attack matrix: `typ-values`) -------------------------------------------------------------


@pytest.mark.parametrize(
    "typ",
    [DROP, "JWT", "client-authentication+jwt", "application/client-authentication+jwt", "CLIENT-AUTHENTICATION+JWT", "jwt"],
    ids=["absent", "JWT", "client-auth", "application-prefix", "upper", "lower-jwt"],
)
def test_typ_accepted(broker, c1, typ):
    header = {"alg": "ES256", "kid": "c1-1"}
    if typ is not DROP:
        header["typ"] = typ
    assert_token(broker.token(form(c1.assertion(NOW, header=header))))


@pytest.mark.parametrize(
    "typ_json",
    ['"at+jwt"', '"application/at+jwt"', '"dpop+jwt"', '"secevent+jwt"', '"authorization-grant+jwt"', '""', "123"],
    ids=["at+jwt", "application-at+jwt", "dpop", "secevent", "authz-grant", "empty", "int"],
)
def test_typ_rejected(broker, c1, typ_json):
    reject(broker, c1_raw(c1, '{"alg":"ES256","kid":"c1-1","typ":' + typ_json + "}", claims_json()))


# -- serialization (attack matrix: `not-compact-jws`, `oversized-segments`, `duplicate-header-members`) ---


def _mutations(valid: str) -> dict[str, str]:
    h, p, s = valid.split(".")
    return {
        "json-flattened": json.dumps({"protected": h, "payload": p, "signature": s}),
        "json-general": json.dumps({"payload": p, "signatures": [{"protected": h, "signature": s}]}),
        "jwe-5-segments": ".".join([h, "", "aXY", p, "dGFn"]),
        "two-segments": h + "." + p,
        "four-segments": valid + ".x",
        "padding": h + "=." + p + "." + s,
        "plus-slash": valid.replace("-", "+").replace("_", "/") if ("-" in valid or "_" in valid) else h + "+." + p + "." + s,
        "leading-space": " " + valid,
        "trailing-newline": valid + "\n",
        "two-jwts-dot": valid + "." + valid,
        "two-jwts-space": valid + " " + valid,
    }


@pytest.mark.parametrize("name", list(_mutations("a.b.c")))
def test_not_a_single_compact_jws(broker, c1, name):
    reject(broker, _mutations(c1.assertion(NOW))[name])


@pytest.mark.parametrize(
    "part,size,reason",
    [("header", 514, "assertion_malformed"), ("payload", 8100, "assertion_too_large"), ("signature", 1026, "assertion_malformed")],
)
def test_oversized_segments(broker, c1, part, size, reason):
    # Valid base64url, header and payload validly signed: only the size cap can refuse it.
    token = padded_assertion(c1, NOW, **{part: size})
    reject(broker, token, reason)
    assert token[:100] not in broker.log_text()


@pytest.mark.parametrize(
    "header",
    ['{"alg":"none","alg":"ES256","kid":"c1-1"}', '{"kid":"c2-1","kid":"c1-1","alg":"ES256"}'],
    ids=["alg", "kid"],
)
def test_duplicate_header_members(broker, c1, header):
    reject(broker, c1_raw(c1, header, claims_json()), "header_invalid")


# -- signatures and keys (docs/attack-matrix.md, "Signatures and keys") ----------------------------


def test_signature_by_unregistered_keys(broker, c1, c2, settings):
    reject(broker, c1.assertion(NOW, key=ECKey.generate_key("P-256")), "signature_invalid")
    reject(broker, sign({"alg": "PS256", "kid": "c1-1"}, good("c1", now=NOW), c2.key), "alg_not_allowed")
    broker_key = broker.app.state.signer()._key
    reject(broker, sign({"alg": "ES256", "kid": "c1-1"}, good("c1", now=NOW), broker_key), "signature_invalid")


def _flip(segment: str, index: int = 5) -> str:
    chars = list(segment)
    chars[index] = "A" if chars[index] != "A" else "B"
    return "".join(chars)


@pytest.mark.parametrize("target", ["header", "payload", "signature", "truncated"])
def test_bit_flips(broker, c1, target):
    h, p, s = c1.assertion(NOW).split(".")
    if target == "header":
        h = b64u(json.dumps({"alg": "ES256", "kid": "c1-1", "typ": "JWT"}))
    elif target == "payload":
        p = b64u(claims_json(exp=NOW + 61))
    elif target == "signature":
        s = _flip(s)
    else:
        s = b64u(base64.urlsafe_b64decode(s + "==")[:-1])
    reject(broker, f"{h}.{p}.{s}")


P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@pytest.mark.parametrize(
    "sig",
    [
        bytes(64),
        P256_N.to_bytes(32, "big") * 2,
        bytes(32) + (1).to_bytes(32, "big"),
        bytes(63),
        bytes(65),
        bytes.fromhex("3006020101020101"),
    ],
    ids=["zeros", "r=s=n", "r=0-s=1", "63-bytes", "65-bytes", "der"],
)
def test_degenerate_es256_signatures(broker, c1, sig):
    h, p, _ = c1.assertion(NOW).split(".")
    reject(broker, f"{h}.{p}.{b64u(sig)}", "signature_invalid")


def test_ecdsa_malleability_is_caught_by_jti_replay(broker, c1):
    assertion = c1.assertion(NOW)
    h, p, s = assertion.split(".")
    sig = base64.urlsafe_b64decode(s + "==")
    r, s_int = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    malleated = f"{h}.{p}.{b64u(r.to_bytes(32, 'big') + (P256_N - s_int).to_bytes(32, 'big'))}"
    assert_token(broker.token(form(assertion)))
    reject(broker, malleated, "jti_replayed")


def test_ecdsa_malleability_reverse_order(broker, c1):
    assertion = c1.assertion(NOW)
    h, p, s = assertion.split(".")
    sig = base64.urlsafe_b64decode(s + "==")
    r, s_int = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    malleated = f"{h}.{p}.{b64u(r.to_bytes(32, 'big') + (P256_N - s_int).to_bytes(32, 'big'))}"
    assert_token(broker.token(form(malleated)))
    reject(broker, assertion, "jti_replayed")


def test_ed25519_and_rs256_and_es384_clients(broker):
    for alg in ("Ed25519", "RS256", "ES384"):
        client = TestClient("k-" + alg.lower(), alg=alg)
        broker.register(client)
        assert_token(broker.token(form(client.assertion(NOW))))


def test_no_kid_with_one_key_uses_it(broker, c1):
    assert_token(broker.token(form(c1.assertion(NOW, header={"alg": "ES256"}))))


def test_no_kid_with_several_keys_tries_each(broker):
    """Each key that fits the alg is tried in registration order; a key of no registration still fails."""
    second = ECKey.generate_key("P-256")
    client = TestClient("two-keys")
    from app.keystore import public_jwk

    client.extra_keys = [public_jwk(second, alg="ES256", kid="two-keys-2")]
    broker.register(client)
    assert_token(broker.token(form(client.assertion(NOW, header={"alg": "ES256"}))))
    assert_token(broker.token(form(sign({"alg": "ES256"}, good("two-keys", now=NOW), second))))
    reject(broker, sign({"alg": "ES256"}, good("two-keys", now=NOW), ECKey.generate_key("P-256")), "signature_invalid")
    assert_token(broker.token(form(sign({"alg": "ES256", "kid": "two-keys-2"}, good("two-keys", now=NOW), second))))


# -- audience (the `aud-*` entries of the attack matrix) -------------------------------------------


@pytest.mark.parametrize(
    "aud",
    [
        TOKEN_URL,
        ISS + "/introspect",
        [ISS, "https://other"],
        [ISS, TOKEN_URL],
        [ISS, ISS],
        [ISS],
        ISS + "/",
        "HTTPS://BROKER.TEST",
        "https://broker.test:443",
        "https%3A%2F%2Fbroker.test",
        " " + ISS,
        "https://other-as.test",
        DROP,
        None,
        42,
        [None],
        [],
    ],
    ids=["token-url", "other-endpoint", "array-other", "array-token", "array-dup", "single-array", "slash", "upper",
         "port", "pct", "space", "other-server", "missing", "null", "int", "array-null", "array-empty"],
)
def test_aud_must_be_exactly_the_issuer_string(broker, c1, aud):
    reject(broker, c1.assertion(NOW, aud=aud), "aud_not_issuer")


def test_single_element_aud_array_when_enabled(tmp_path, clock):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "k", allow_single_element_aud_array=True)
    with Broker(settings, clock) as b:
        client = TestClient("c1")
        b.register(client)
        assert_token(b.token(form(client.assertion(clock.now, aud=[ISS]))))
        assert_invalid_client(b.token(form(client.assertion(clock.now, aud=[ISS, "x"]))))


# -- issuer and subject (attack matrix: `iss-sub-binding`) -----------------------------------------


@pytest.mark.parametrize(
    "claims,reason",
    [
        ({"iss": "wrong-issuer-value"}, "iss_sub_mismatch"),
        ({"iss": DROP}, "iss_sub_invalid"),
        ({"iss": ["c1"]}, "iss_sub_invalid"),
        ({"iss": 1}, "iss_sub_invalid"),
        ({"sub": DROP}, "iss_sub_invalid"),
        ({"sub": "wrong-sub-value"}, "iss_sub_mismatch"),
        ({"sub": ["c1"]}, "iss_sub_invalid"),
        ({"sub": "c2"}, "iss_sub_mismatch"),
    ],
    ids=["wrong-iss", "no-iss", "iss-list", "iss-int", "no-sub", "wrong-sub", "sub-list", "sub-other-client"],
)
def test_iss_sub_binding(broker, c1, c2, claims, reason):
    reject(broker, c1.assertion(NOW, **claims), reason)


def test_iss_c1_sub_c2_signed_by_c2(broker, c1, c2):
    reject(broker, sign({"alg": "PS256", "kid": "c2-1"}, good("c1", now=NOW, sub="c2"), c2.key), "iss_sub_mismatch")


# -- time claims (docs/attack-matrix.md, `exp-expired` to `iat-too-old`) ---------------------------


@pytest.mark.parametrize(
    "claims,reason",
    [
        ({"exp": DROP}, "exp_missing"),
        ({"exp": None}, "exp_missing"),
        ({"exp": NOW - 300, "iat": NOW - 360}, "exp_expired"),
        ({"exp": NOW - 11, "iat": NOW - 60}, "exp_expired"),
        ({"exp": NOW - 10, "iat": NOW - 60}, "exp_expired"),
        ({"exp": NOW + 301}, "exp_too_far"),
        ({"exp": NOW + 200, "iat": NOW - 101}, "exp_too_far"),
        ({"iat": NOW + 61}, "iat_in_future"),
        ({"iat": NOW + 11}, "iat_in_future"),
        ({"nbf": NOW + 61}, "nbf_in_future"),
        ({"nbf": NOW + 50, "exp": NOW + 40}, "nbf_in_future"),
        ({"nbf": NOW + 5, "exp": NOW + 4}, "nbf_after_exp"),
        ({"iat": NOW - 86400}, "iat_too_old"),
    ],
    ids=["exp-missing", "exp-null", "exp-5min-past", "exp-past-leeway", "exp-boundary", "exp-too-far",
         "lifetime-too-long", "iat-61s-future", "iat-11s-future", "nbf-61s", "nbf-over-exp", "nbf-after-exp", "stale-iat"],
)
def test_time_claims_rejected(broker, c1, claims, reason):
    reject(broker, c1.assertion(NOW, **claims), reason)


@pytest.mark.parametrize(
    "claims",
    [
        {"exp": NOW - 5, "iat": NOW - 60},
        {"nbf": NOW + 8},
        {"nbf": NOW + 10},
        {"iat": NOW + 8},
        {"iat": NOW + 10},
        {"exp": NOW + 300},
        {"iat": DROP},
        {"exp": 1.8e9 + 60.5},
    ],
    ids=["exp-5s-past-within-leeway", "nbf+8", "nbf+10", "iat+8", "iat+10", "exp-at-cap", "no-iat", "fractional-exp"],
)
def test_time_claims_accepted(broker, c1, claims):
    assert_token(broker.token(form(c1.assertion(NOW, **claims))))


@pytest.mark.parametrize(
    "literal",
    ['"1800000060"', "true", "false", "NaN", "Infinity", "-Infinity", "1e400", "-1", "1" + "0" * 4000, str(2**63)],
    ids=["string", "true", "false", "nan", "inf", "-inf", "1e400", "negative", "10^4000", "2^63"],
)
@pytest.mark.parametrize("claim", ["exp", "iat", "nbf"])
def test_malformed_numeric_dates(broker, c1, claim, literal):
    claims = good("c1", now=NOW)
    text = json.dumps(claims)
    if claim in claims:
        text = text.replace(f'"{claim}": {claims[claim]}', f'"{claim}": {literal}')
    else:
        text = text[:-1] + f', "{claim}": {literal}}}'
    reject(broker, c1_raw(c1, '{"alg":"ES256","kid":"c1-1"}', text))


# -- jti and payload shape (attack matrix: `jti-invalid`, `duplicate-claims`, `claims-not-an-object`) ---


@pytest.mark.parametrize(
    "jti_json",
    ['""', "7", '["a"]', "{}", "null", '"' + "j" * 257 + '"', '"\\ud800"'],
    ids=["empty", "int", "list", "object", "null", "257-chars", "lone-surrogate"],
)
def test_bad_jti(broker, c1, jti_json):
    claims = good("c1", now=NOW)
    text = json.dumps(claims).replace(json.dumps(claims["jti"]), jti_json)
    reject(broker, c1_raw(c1, '{"alg":"ES256","kid":"c1-1"}', text), "jti_invalid")


def test_missing_jti(broker, c1):
    reject(broker, c1.assertion(NOW, jti=DROP), "jti_invalid")


def test_jti_of_256_chars_is_accepted(broker, c1):
    assert_token(broker.token(form(c1.assertion(NOW, jti="j" * 256))))


@pytest.mark.parametrize(
    "payload",
    [
        '{"iss":"c2","sub":"c1","aud":"%s","jti":"a","exp":%d,"iss":"c1"}' % (ISS, NOW + 60),
        '{"iss":"c1","sub":"c1","aud":"https://other","jti":"a","exp":%d,"aud":"%s"}' % (NOW + 60, ISS),
        '{"iss":"c1","sub":"c1","aud":"%s","jti":"a","jti":"b","exp":%d}' % (ISS, NOW + 60),
    ],
    ids=["iss", "aud", "jti"],
)
def test_duplicate_claims(broker, c1, payload):
    reject(broker, c1_raw(c1, '{"alg":"ES256","kid":"c1-1"}', payload), "claims_invalid")


@pytest.mark.parametrize(
    "payload",
    ["[]", '"x"', "1", "null", b"\xff\xfe".decode("latin-1"),
     '{"iss":"c1","sub":"c1","aud":"%s","jti":"a","exp":%d,"x":NaN}' % (ISS, NOW + 60),
     '{"iss":"c1","sub":"c1","aud":"%s","jti":"a","exp":%d,"x":%s}' % (ISS, NOW + 60, "[" * 2000 + "]" * 2000)],
    ids=["list", "string", "int", "null", "invalid-utf8", "nan-extra", "deep-nesting"],
)
def test_payload_not_an_object(broker, c1, payload):
    if payload == b"\xff\xfe".decode("latin-1"):
        h64 = b64u('{"alg":"ES256","kid":"c1-1"}')
        p64 = base64.urlsafe_b64encode(b"\xff\xfe").rstrip(b"=").decode()
        sig = JWSRegistry.algorithms["ES256"].sign(f"{h64}.{p64}".encode(), c1.key)
        token = f"{h64}.{p64}.{b64u(sig)}"
    else:
        token = c1_raw(c1, '{"alg":"ES256","kid":"c1-1"}', payload)
    reject(broker, token, "claims_invalid")


# -- cross-JWT confusion (attack matrix: `cross-jwt-confusion`) ------------------------------------


def test_access_token_as_assertion(broker, c1):
    at = assert_token(broker.token(form(c1.assertion(NOW))))["access_token"]
    reject(broker, at)


def test_assertion_for_another_as(broker, c1):
    reject(broker, c1.assertion(NOW, aud="https://another-as.test"), "aud_not_issuer")


# -- the order of checks: a forged assertion does not burn a jti (attack matrix: `forged-assertion-keeps-jti`) ---


@pytest.mark.parametrize(
    "forge",
    [
        lambda c1: c1.assertion(NOW, key=ECKey.generate_key("P-256"), jti="X"),
        lambda c1: c1.assertion(NOW, aud=TOKEN_URL, jti="X"),
        lambda c1: c1.assertion(NOW, exp=NOW - 100, iat=NOW - 150, jti="X"),
    ],
    ids=["bad-signature", "wrong-aud", "expired"],
)
def test_forged_assertion_does_not_burn_jti(broker, c1, forge: Callable[[TestClient], str]):
    reject(broker, forge(c1))
    assert_token(broker.token(form(c1.assertion(NOW, jti="X"))))


def test_payload_of_128kb_is_refused_by_the_body_limit(broker, c1):
    h, _, s = c1.assertion(NOW).split(".")
    r = broker.token(form(f"{h}.{'A' * 128_001}.{s}"))
    assert r.status_code == 413


def test_a_decoded_header_is_shared_read_only_and_a_refused_one_is_refused_every_time() -> None:
    """``app.oauth.assertion._header`` decodes a header once per distinct bytes: the mapping two
    assertions share cannot be changed by either, and a refusal is not remembered as a header."""
    from app.oauth.assertion import AssertionPolicy, parse_assertion
    from app.oauth.errors import InvalidClient

    policy = AssertionPolicy(issuer=ISS, algs=frozenset({"ES256"}))
    c1 = TestClient("c1", kid="c1-1")
    first, second = (parse_assertion(c1.assertion(NOW), policy) for _ in range(2))
    assert first.header is second.header and dict(first.header) == {
        "alg": "ES256", "kid": "c1-1", "typ": "client-authentication+jwt"}
    with pytest.raises(TypeError):
        first.header["kid"] = "other"  # type: ignore[index]
    forbidden = sign({"alg": "ES256", "kid": "c1-1", "jku": "https://attacker.example/jwks"}, good("c1", now=NOW),
                     c1.key)
    for _ in range(2):
        with pytest.raises(InvalidClient) as refused:
            parse_assertion(forbidden, policy)
        assert refused.value.reason == "header_param_forbidden"
