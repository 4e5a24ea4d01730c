"""DPoP (RFC 9449) at the token endpoint (docs/dpop.md; docs/attack-matrix.md, "DPoP"): the proof
checks of §4.3, one parametrized row each with the exact answer; proof replay recorded in the
token endpoint's one script call; the bound token (``cnf.jkt``, ``token_type`` DPoP) and its cache
id; server nonces (§8); the per-client policy (§5.2); metadata, introspection and revocation.
In process on fakeredis with a frozen clock; the real-Redis and two-process runs are at the end."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, OKPKey, RSAKey
from joserfc.jws import JWSRegistry

from app.config import Settings
from app.oauth.access_token import verify_access_token
from app.oauth.dpop import jwk_thumbprint
from app.service.dpop import ProofChecker
from app.store import keyspace
from app.store.base import ProofRecord, StoreUnavailable
from app.store.dpop import RedisNonceSecret
from app.store.redis import connect
from app.store.token_cache import RedisTokenStore
from tests.conftest import Broker, FrozenClock, free_port
from tests.expect import assert_hygiene, assert_invalid_client, assert_token
from tests.helpers import ISS, RS2, URN, TestClient, b64u, decode_unverified, form
from token_broker_jose.dpop import create_proof

HTU = ISS + "/token"
GEN = {
    "ES256": lambda: ECKey.generate_key("P-256"),
    "ES384": lambda: ECKey.generate_key("P-384"),
    "PS256": lambda: RSAKey.generate_key(2048),
    "RS256": lambda: RSAKey.generate_key(2048),
    "Ed25519": lambda: OKPKey.generate_key("Ed25519"),
}
_MEMBERS = {"EC": ("crv", "kty", "x", "y"), "RSA": ("e", "kty", "n"), "OKP": ("crv", "kty", "x")}


def public(key: Any) -> dict[str, Any]:
    return {k: v for k, v in key.as_dict(private=False).items() if k in _MEMBERS[key.key_type]}


def thumbprint(key: Any) -> str:
    return jwk_thumbprint(public(key))


def proof(key: Any, now: float, *, alg: str = "ES256", header: dict[str, Any] | None = None,
          drop: tuple[str, ...] = (), sign_with: Any = None, **claims: Any) -> str:
    """A proof built by hand (any header or claim can be wrong): ``header`` / ``claims`` override
    the good ones, ``drop`` removes claims."""
    hdr = {"typ": "dpop+jwt", "alg": alg, "jwk": public(key), **(header or {})}
    body: dict[str, Any] = {"jti": f"p-{now}-{id(claims)}", "htm": "POST", "htu": HTU, "iat": int(now), **claims}
    for name in drop:
        body.pop(name)
    signing_input = b64u(json.dumps(hdr)) + "." + b64u(json.dumps(body))
    sig = JWSRegistry.algorithms[alg].sign(signing_input.encode(), sign_with or key)
    return signing_input + "." + b64u(sig)


def dpop_token(broker: Broker, client: TestClient, dpop: str | list[str] | None, assertion: str | None = None,
               **params: str) -> httpx.Response:
    headers: list[tuple[str, str | bytes]] = [("content-type", "application/x-www-form-urlencoded")]
    for value in [dpop] if isinstance(dpop, str) else dpop or []:
        headers.append(("DPoP", value.encode("utf-8")))  # bytes: a non-ASCII proof is sent as UTF-8
    body = str(httpx.QueryParams(form(assertion or client.assertion(broker.clock.now), **params)))
    return broker.http.post("/token", content=body, headers=headers)


def assert_dpop_error(r: httpx.Response, error: str, description: str, status: int = 400) -> None:
    assert (r.status_code, r.json()) == (status, {"error": error, "error_description": description}), r.text
    assert_hygiene(r)


def assert_bound(r: httpx.Response, key: Any) -> dict[str, Any]:
    assert r.status_code == 200, r.text
    assert_hygiene(r)
    body = r.json()
    assert set(body) == {"access_token", "token_type", "expires_in", "scope"}
    assert body["token_type"] == "DPoP"
    assert decode_unverified(body["access_token"])[1]["cnf"] == {"jkt": thumbprint(key)}
    return body


def rejected(broker: Broker) -> list[dict[str, Any]]:
    return [line for line in broker.logs() if line.get("event") == "token.rejected"]


@pytest.fixture
def key() -> Any:
    return ECKey.generate_key("P-256")


# -- a good proof ------------------------------------------------------------------------------


@pytest.mark.parametrize("alg,header_alg", [("ES256", "ES256"), ("ES384", "ES384"), ("PS256", "PS256"),
                                            ("RS256", "RS256"), ("Ed25519", "Ed25519"), ("Ed25519", "EdDSA")],
                         ids=["ES256", "ES384", "PS256", "RS256", "Ed25519", "EdDSA"])
def test_proof_gets_a_dpop_bound_token(broker, c1, alg, header_alg):
    """`dpop-token-binding`: the token carries cnf.jkt of the proof key and token_type is DPoP (§5, §6.1)."""
    key = GEN[alg]()
    r = dpop_token(broker, c1, proof(key, broker.clock.now, alg=header_alg))
    body = assert_bound(r, key)
    assert "dpop-nonce" not in r.headers  # nonces are off by default
    issued = [line for line in broker.logs() if line.get("event") == "token.issued"][-1]
    assert issued["dpop_jkt"] == thumbprint(key)
    header, claims = decode_unverified(body["access_token"])
    assert list(claims) == ["iss", "sub", "client_id", "aud", "scope", "jti", "iat", "exp", "cnf"]


def test_dpop_token_verifies_with_the_published_keys(broker, c1, key):
    body = assert_bound(dpop_token(broker, c1, create_proof(key, alg="ES256", htm="POST", htu=HTU, now=broker.clock.now)), key)
    from app.oauth.access_token import verification_keys_from_jwks

    jwks = json.loads(broker.http.get("/jwks.json").content)
    claims = verify_access_token(body["access_token"], verification_keys_from_jwks(jwks), issuer=ISS, audience=None,
                                 now=broker.clock.now, leeway=0)
    assert claims["cnf"] == {"jkt": thumbprint(key)}


def test_bearer_token_is_unchanged(broker, c1):
    """No DPoP header: a bearer token with exactly the claims it always had (no cnf)."""
    body = assert_token(broker.get_token(c1))
    assert list(decode_unverified(body["access_token"])[1]) == ["iss", "sub", "client_id", "aud", "scope", "jti", "iat", "exp"]


@pytest.mark.parametrize("htu", [HTU + "?x=1", HTU + "#f", "HTTPS://BROKER.TEST/token", "https://broker.test:443/token"],
                         ids=["query-ignored", "fragment-ignored", "case-of-scheme-and-host", "default-port"])
def test_htu_compared_after_normalization(broker, c1, key, htu):
    """§4.3 step 9: htu without query and fragment, RFC 3986 §6.2.2-6.2.3 normalization."""
    assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, htu=htu)), key)


def test_htu_is_the_external_url_not_the_address_reached(broker, c1, key):
    """Behind a proxy the broker is reached at another address: htu names the issuer's token endpoint."""
    r = dpop_token(broker, c1, proof(key, broker.clock.now, htu="http://127.0.0.1:8000/token"))
    assert_dpop_error(r, "invalid_dpop_proof", f"the DPoP proof's htu must be {HTU}")


# -- every check of RFC 9449 §4.3, one row each -------------------------------------------------

_OTHER = ECKey.generate_key("P-256")
Make = Callable[[Any, float], "str | list[str]"]


def _segments(text: str) -> Make:
    return lambda key, now: text


ROWS: list[tuple[str, Make, str, str]] = [
    # (id, build(key, now) -> header value(s), reason, description)
    ("step1-two-headers", lambda k, n: [proof(k, n), proof(k, n, jti="other")], "dpop_multiple",
     "Send exactly one DPoP header."),
    ("step1-folded-into-one", lambda k, n: proof(k, n) + ", " + proof(k, n, jti="other"), "dpop_multiple",
     "Send exactly one DPoP header."),
    ("step2-not-a-jws", _segments("not-a-jwt"), "dpop_malformed", "the DPoP header is not a compact JWS"),
    ("step2-empty", _segments(""), "dpop_malformed", "the DPoP header is not a compact JWS"),
    ("step2-non-ascii", lambda k, n: proof(k, n)[:-4] + "\u00e9\u00e9\u00e9\u00e9", "dpop_malformed",
     "the DPoP header is not a compact JWS"),
    ("step2-too-long", lambda k, n: "a" * 9000 + "." + "b" * 10 + "." + "c", "dpop_malformed",
     "the DPoP header is not a compact JWS"),
    ("step2-four-segments", lambda k, n: proof(k, n) + ".x", "dpop_malformed", "the DPoP header is not a compact JWS"),
    ("step2-header-not-json", lambda k, n: b64u("nope") + "." + proof(k, n).split(".", 1)[1], "dpop_malformed",
     "the DPoP proof header is not a JSON object"),
    ("step2-claims-not-json", lambda k, n: _resign(k, '{"typ":"dpop+jwt","alg":"ES256","jwk":' + json.dumps(public(k)) + "}",
                                                    "[1]"), "dpop_claims_invalid",
     "the DPoP proof's claims are malformed or iat is missing"),
    ("step3-jti-missing", lambda k, n: proof(k, n, drop=("jti",)), "dpop_jti_invalid",
     "the DPoP proof's jti claim is missing or invalid"),
    ("step3-jti-empty", lambda k, n: proof(k, n, jti=""), "dpop_jti_invalid", "the DPoP proof's jti claim is missing or invalid"),
    ("step3-htm-missing", lambda k, n: proof(k, n, drop=("htm",)), "dpop_htm_invalid",
     "the DPoP proof's htm claim is missing or invalid"),
    ("step3-htu-missing", lambda k, n: proof(k, n, drop=("htu",)), "dpop_htu_invalid",
     "the DPoP proof's htu claim is missing or invalid"),
    ("step3-iat-missing", lambda k, n: proof(k, n, drop=("iat",)), "dpop_iat_invalid",
     "the DPoP proof's claims are malformed or iat is missing"),
    ("step3-iat-string", lambda k, n: proof(k, n, iat=str(int(n))), "dpop_iat_invalid",
     "the DPoP proof's claims are malformed or iat is missing"),
    ("step4-typ-missing", lambda k, n: proof(k, n, header={"typ": None}), "dpop_typ_invalid",
     "the DPoP proof's typ must be dpop+jwt"),
    ("step4-typ-jwt", lambda k, n: proof(k, n, header={"typ": "JWT"}), "dpop_typ_invalid",
     "the DPoP proof's typ must be dpop+jwt"),
    ("step4-crit", lambda k, n: proof(k, n, header={"crit": ["x-unknown"], "x-unknown": 1}), "dpop_crit",
     "the DPoP proof header must not list critical extensions (crit)"),
    ("step5-alg-none", lambda k, n: b64u(json.dumps({"typ": "dpop+jwt", "alg": "none", "jwk": public(k)})) + "."
     + proof(k, n).split(".")[1] + ".AAAA", "dpop_alg_not_allowed", "the DPoP proof's alg is not accepted here"),
    ("step5-alg-hs256", lambda k, n: proof(k, n, header={"alg": "HS256"}), "dpop_alg_not_allowed",
     "the DPoP proof's alg is not accepted here"),
    # A JSON array or object as alg: unhashable, it was a TypeError (500) in the set membership test.
    ("step5-alg-array", lambda k, n: b64u(json.dumps({"typ": "dpop+jwt", "alg": ["ES256"], "jwk": public(k)})) + "."
     + proof(k, n).split(".")[1] + ".AAAA", "dpop_alg_not_allowed", "the DPoP proof's alg is not accepted here"),
    ("step5-alg-object", lambda k, n: b64u(json.dumps({"typ": "dpop+jwt", "alg": {}, "jwk": public(k)})) + "."
     + proof(k, n).split(".")[1] + ".AAAA", "dpop_alg_not_allowed", "the DPoP proof's alg is not accepted here"),
    ("step6-signature-other-key", lambda k, n: proof(k, n, sign_with=_OTHER), "dpop_signature_invalid",
     "the DPoP proof's signature does not verify with its jwk"),
    ("step6-signature-truncated", lambda k, n: proof(k, n)[:-8], "dpop_signature_invalid",
     "the DPoP proof's signature does not verify with its jwk"),
    ("step7-jwk-missing", lambda k, n: proof(k, n, header={"jwk": None}), "dpop_jwk_missing",
     "the DPoP proof header must carry the public key as jwk"),
    ("step7-jwk-private", lambda k, n: proof(k, n, header={"jwk": k.as_dict(private=True)}), "dpop_jwk_private",
     "the DPoP proof's jwk must not contain private key members"),
    ("step7-jwk-symmetric", lambda k, n: proof(k, n, header={"jwk": {"kty": "oct", "k": "c2VjcmV0"}}), "dpop_jwk_private",
     "the DPoP proof's jwk must not contain private key members"),
    ("step7-jwk-other-curve", lambda k, n: proof(k, n, header={"jwk": public(ECKey.generate_key("P-384"))}),
     "dpop_jwk_invalid", "the DPoP proof's jwk does not fit its alg"),
    ("step7-jwk-not-on-curve", lambda k, n: proof(k, n, header={"jwk": {**public(k), "y": public(_OTHER)["y"]}}),
     "dpop_jwk_invalid", "the DPoP proof's jwk is not a usable public key"),
    # The same key with a leading zero octet on x: it would bind the token to another thumbprint.
    ("step7-jwk-not-canonical", lambda k, n: proof(k, n, header={"jwk": {**public(k), "x": b64u(
        b"\x00" + base64.urlsafe_b64decode(public(k)["x"] + "=="))}}),
     "dpop_jwk_invalid", "the DPoP proof's jwk is not in its canonical form"),
    ("step8-htm-get", lambda k, n: proof(k, n, htm="GET"), "dpop_htm_mismatch", "the DPoP proof's htm must be POST"),
    ("step8-htm-lowercase", lambda k, n: proof(k, n, htm="post"), "dpop_htm_mismatch", "the DPoP proof's htm must be POST"),
    ("step9-htu-other-path", lambda k, n: proof(k, n, htu=ISS + "/introspect"), "dpop_htu_mismatch",
     f"the DPoP proof's htu must be {HTU}"),
    ("step9-htu-other-host", lambda k, n: proof(k, n, htu="https://evil.test/token"), "dpop_htu_mismatch",
     f"the DPoP proof's htu must be {HTU}"),
    ("step9-htu-http", lambda k, n: proof(k, n, htu="http://broker.test/token"), "dpop_htu_mismatch",
     f"the DPoP proof's htu must be {HTU}"),
    ("step9-htu-not-a-url", lambda k, n: proof(k, n, htu="token"), "dpop_htu_mismatch", f"the DPoP proof's htu must be {HTU}"),
    ("step10-nonce-not-a-string", lambda k, n: proof(k, n, nonce=5), "dpop_nonce_invalid",
     "the DPoP proof's nonce claim is invalid"),
    ("step11-iat-too-old", lambda k, n: proof(k, n, iat=int(n) - 60 - 10 - 1), "dpop_iat_too_old",
     "the DPoP proof is older than 60 seconds"),
    ("step11-iat-in-future", lambda k, n: proof(k, n, iat=int(n) + 10 + 1), "dpop_iat_in_future",
     "the DPoP proof's iat is in the future"),
]


def _resign(key: Any, header_text: str, payload_text: str) -> str:
    signing_input = b64u(header_text) + "." + b64u(payload_text)
    return signing_input + "." + b64u(JWSRegistry.algorithms["ES256"].sign(signing_input.encode(), key))


@pytest.mark.parametrize("build,reason,description", [r[1:] for r in ROWS], ids=[r[0] for r in ROWS])
def test_proof_check_refuses(broker, c1, key, build, reason, description):
    """`dpop-proof-rules`: 400 invalid_dpop_proof with the check's text, logged with its reason; the
    assertion is not spent (nothing was recorded): the same assertion with a good proof gets a token."""
    assertion = c1.assertion(broker.clock.now)
    r = dpop_token(broker, c1, build(key, broker.clock.now), assertion)
    assert_dpop_error(r, "invalid_dpop_proof", description)
    assert rejected(broker)[-1]["reason"] == reason
    assert rejected(broker)[-1]["error"] == "invalid_dpop_proof"
    assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="good"), assertion), key)


def test_iat_at_the_window_edges_is_accepted(broker, c1, key):
    now = broker.clock.now
    assert_bound(dpop_token(broker, c1, proof(key, now, iat=int(now) - 60 - 10, jti="old")), key)
    assert_bound(dpop_token(broker, c1, proof(key, now, iat=int(now) + 10, jti="new")), key)


@pytest.fixture
def es256_only(tmp_path, clock):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, dpop_algs=("ES256",))
    with Broker(settings, clock) as b:
        yield b


def test_alg_outside_the_configured_list_is_refused(es256_only):
    """BROKER_DPOP_ALGS narrows §4.3 step 5; the metadata says the same."""
    c = TestClient("c1")
    es256_only.register(c)
    r = dpop_token(es256_only, c, proof(GEN["ES384"](), es256_only.clock.now, alg="ES384"))
    assert_dpop_error(r, "invalid_dpop_proof", "the DPoP proof's alg is not accepted here")
    doc = es256_only.http.get("/.well-known/oauth-authorization-server").json()
    assert doc["dpop_signing_alg_values_supported"] == ["ES256"]


# -- order: client authentication first -----------------------------------------------------------


def test_unauthenticated_caller_gets_invalid_client_whatever_its_proof(broker, c1, key):
    """`dpop-order-client-auth-first`: a bad assertion with a bad proof is the generic invalid_client
    (a DPoP answer is only for an authenticated client), and a good proof sent with a bad assertion
    is not recorded: it still gets a token with a good assertion."""
    stranger = TestClient("c1", kid="c1-1")  # same name, another key: the signature fails
    r = dpop_token(broker, c1, "not-a-jwt", stranger.assertion(broker.clock.now))
    assert_invalid_client(r)
    good = proof(key, broker.clock.now)
    assert_invalid_client(dpop_token(broker, c1, good, stranger.assertion(broker.clock.now)))
    assert_bound(dpop_token(broker, c1, good), key)


# -- replay (§11.1) ------------------------------------------------------------------------------


def test_replayed_proof_is_refused_and_the_assertion_is_not_spent(broker, c1, key):
    """`dpop-proof-replay`: the proof's jti is recorded with the assertion's in one script call; a
    second use (with another, fresh assertion) is 400 dpop_replayed and records nothing."""
    p = proof(key, broker.clock.now)
    assert_bound(dpop_token(broker, c1, p), key)
    assertion = c1.assertion(broker.clock.now)
    r = dpop_token(broker, c1, p, assertion)
    assert_dpop_error(r, "invalid_dpop_proof", "The DPoP proof was used before: send a new proof.")
    assert rejected(broker)[-1]["reason"] == "dpop_replayed"
    assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="fresh"), assertion), key)


def test_replayed_assertion_records_no_proof(broker, c1, key):
    assertion = c1.assertion(broker.clock.now)
    assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="a"), assertion), key)
    p = proof(key, broker.clock.now, jti="b")
    assert_invalid_client(dpop_token(broker, c1, p, assertion))
    assert_bound(dpop_token(broker, c1, p), key)


def test_proof_jti_is_per_key(broker, c1, key):
    """The record is scoped by thumbprint: the same jti from another key is another proof."""
    assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="same")), key)
    other = ECKey.generate_key("P-256")
    assert_bound(dpop_token(broker, c1, proof(other, broker.clock.now, jti="same")), other)


def test_proof_record_lives_for_the_acceptance_window(broker, c1, key):
    p = proof(key, broker.clock.now, jti="ttl")
    assert_bound(dpop_token(broker, c1, p), key)
    redis = broker.app.state.registry.redis
    ttl_ms = broker.call(redis.pttl, keyspace.dpop_proof("c1", thumbprint(key), "ttl"))
    window_ms = (60 + 2 * 10 + 30) * 1000  # max age + twice the leeway + the clock skew
    assert window_ms - 5000 < ttl_ms <= window_ms


def _store_variants() -> list[Any]:
    return [pytest.param(quota, reuse, cache, id=f"quota-{quota}-reuse-{reuse is not None}-cache-{cache is not None}")
            for quota in (0, 100) for reuse in (None, "d" * 64) for cache in (None, "cid")]


@pytest.mark.parametrize("quota,reuse,cache_id", _store_variants())
def test_every_script_variant_records_the_proof(broker, quota, reuse, cache_id):
    """Quota, assertion reuse, refused grant (no cache id): each script records the proof, refuses
    its replay without spending the assertion, and records no proof for a replayed assertion."""
    store = RedisTokenStore(broker.app.state.registry.redis, quota=quota, timeout=0.3, retries=1)
    broker.call(_check_store_variant, store, reuse, cache_id)


async def _check_store_variant(store: RedisTokenStore, reuse: str | None, cache_id: str | None) -> None:
    p1, p2 = ProofRecord("jkt", "p1", 60_000), ProofRecord("jkt", "p2", 60_000)
    first = await store.consume_and_lookup("c", "a1", "r1", 60_000, cache_id, reuse=reuse, proof=p1)
    assert (first.first_use, first.proof_replayed) == (True, False)
    again = await store.consume_and_lookup("c", "a1", "r1", 60_000, cache_id, reuse=reuse, proof=p1)
    assert (again.first_use, again.proof_replayed) == (True, False)  # our own retried call
    replay = await store.consume_and_lookup("c", "a2", "r2", 60_000, cache_id, reuse=reuse, proof=p1)
    assert (replay.first_use, replay.proof_replayed) == (False, True)
    assert await store.redis.exists(keyspace.replay("c", "a2")) == 0  # the assertion is not spent
    spent = await store.consume_and_lookup("c", "a1", "r3", 60_000, cache_id, reuse=None, proof=p2)
    assert (spent.first_use, spent.proof_replayed) == (False, False)  # a replayed assertion records no proof
    assert await store.redis.exists(keyspace.dpop_proof("c", "jkt", "p2")) == 0
    assert 0 < await store.redis.pttl(keyspace.dpop_proof("c", "jkt", "p1")) <= 60_000


def test_script_refused_by_redis_falls_back_to_plain_records(broker):
    """A script Redis refuses as a whole (here: the quota key of the wrong type) falls back to the
    plain records, proof first: a replayed proof is still refused and spends no assertion."""
    redis = broker.app.state.registry.redis
    store = RedisTokenStore(redis, quota=100, timeout=0.3, retries=1)
    broker.call(redis.lpush, keyspace.token_quota("c"), "not-a-counter")
    proof_record = ProofRecord("jkt", "p1", 60_000)
    first = broker.call(lambda: store.consume_and_lookup("c", "a1", "r1", 60_000, "cid", proof=proof_record))
    assert (first.first_use, first.proof_replayed, first.cache_error) == (True, False, "ResponseError")
    replay = broker.call(lambda: store.consume_and_lookup("c", "a2", "r2", 60_000, "cid", proof=proof_record))
    assert (replay.first_use, replay.proof_replayed) == (False, True)
    assert broker.call(redis.exists, keyspace.replay("c", "a2")) == 0


# -- the issued-token cache -----------------------------------------------------------------------


def test_cache_serves_a_bound_token_only_to_its_key(broker, c1, key):
    """`dpop-cache-isolation`: the cache id includes the jkt: the same key gets the cached token,
    another key or a bearer request never does, and a DPoP request never gets the bearer token."""
    first = assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="1")), key)
    again = assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="2")), key)
    assert again["access_token"] == first["access_token"]
    other = ECKey.generate_key("P-256")
    third = assert_bound(dpop_token(broker, c1, proof(other, broker.clock.now, jti="3")), other)
    assert third["access_token"] != first["access_token"]
    bearer = assert_token(broker.get_token(c1))
    assert bearer["access_token"] not in (first["access_token"], third["access_token"])
    bearer_again = assert_token(broker.get_token(c1))
    assert bearer_again["access_token"] == bearer["access_token"]
    fourth = assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="4")), key)
    assert fourth["access_token"] == first["access_token"]


def test_cache_recheck_refuses_an_entry_bound_to_another_key(broker, c1, key):
    """An entry planted under a DPoP id (or read for another jkt) is rebuilt with the request's cnf
    and compared byte for byte: a bearer token or another key's token is a mismatch."""
    from app.oauth.grant import decide_grant

    assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now)), key)
    cache = broker.app.state.token_cache
    client = broker.call(broker.app.state.directory.get, "c1")
    grant = decide_grant(client, None, None, 300)
    signer = broker.app.state.signer()
    entry_id = cache.cache_id(grant, client.record.version, signer, thumbprint(key))
    raw = broker.call(cache.store.read, "c1", entry_id)
    assert cache.check(raw, grant, signer, broker.clock.now, thumbprint(key))[1] == "hit"
    assert cache.check(raw, grant, signer, broker.clock.now, thumbprint(_OTHER))[1] == "mismatch"
    assert cache.check(raw, grant, signer, broker.clock.now, None)[1] == "mismatch"
    assert entry_id != cache.cache_id(grant, client.record.version, signer)


# -- server nonces (§8) --------------------------------------------------------------------------


@pytest.fixture
def nonce_broker(tmp_path, clock):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, dpop_nonce=True,
                        dpop_nonce_lifetime=300)
    with Broker(settings, clock) as b:
        yield b


def test_nonce_required_then_accepted(nonce_broker, key):
    """`dpop-nonce`: no nonce → 400 use_dpop_nonce with DPoP-Nonce; the assertion is not spent; the
    retry with that nonce gets a token and the answer carries the current nonce."""
    b = nonce_broker
    c = TestClient("c1")
    b.register(c)
    assertion = c.assertion(b.clock.now)
    r = dpop_token(b, c, proof(key, b.clock.now, jti="1"), assertion)
    assert_dpop_error(r, "use_dpop_nonce", "Authorization server requires nonce in DPoP proof")
    nonce = r.headers["dpop-nonce"]
    assert rejected(b)[-1]["reason"] == "dpop_nonce_required"
    ok = dpop_token(b, c, proof(key, b.clock.now, jti="2", nonce=nonce), assertion)
    assert_bound(ok, key)
    assert ok.headers["dpop-nonce"] == nonce
    assert "dpop-nonce" not in assert_token_response(b.get_token(c)).headers  # bearer answers carry none


def assert_token_response(r: httpx.Response) -> httpx.Response:
    assert_token(r)
    return r


@pytest.mark.parametrize("advance,accepted", [(299, True), (300, True), (600, False), (3000, False)],
                         ids=["same-window", "next-window-previous-accepted", "two-windows-later", "long-after"])
def test_nonce_windows(nonce_broker, key, advance, accepted):
    b = nonce_broker
    c = TestClient("c1")
    b.register(c)
    b.clock.now = 1_800_000_000.0 - 1_800_000_000.0 % 300  # the start of a window
    nonce = dpop_token(b, c, proof(key, b.clock.now, jti="0")).headers["dpop-nonce"]
    b.clock.advance(advance)
    r = dpop_token(b, c, proof(key, b.clock.now, jti="1", nonce=nonce))
    if accepted:
        assert_bound(r, key)
    else:
        assert_dpop_error(r, "use_dpop_nonce",
                          "The DPoP proof's nonce is not current: retry with the DPoP-Nonce header's value.")
        assert r.headers["dpop-nonce"] != nonce
        assert rejected(b)[-1]["reason"] == "dpop_nonce_stale"


def test_nonce_made_up_is_refused(nonce_broker, key):
    b = nonce_broker
    c = TestClient("c1")
    b.register(c)
    r = dpop_token(b, c, proof(key, b.clock.now, nonce="made-up"))
    assert_dpop_error(r, "use_dpop_nonce", "The DPoP proof's nonce is not current: retry with the DPoP-Nonce header's value.")
    r = dpop_token(b, c, proof(key, b.clock.now, nonce="\u00e9t\u00e9", jti="x"))
    assert_dpop_error(r, "use_dpop_nonce", "The DPoP proof's nonce is not current: retry with the DPoP-Nonce header's value.")


def test_nonce_secret_unknown_and_store_down_fails_closed(tmp_path):
    """Nonces on, the secret never read and Redis not answering: StoreUnavailable (the endpoint's 503)."""
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", dpop_nonce=True)
    dead = connect(f"redis://127.0.0.1:{free_port()}", timeout=0.2, retries=0)
    checker = ProofChecker(settings, secrets_store=RedisNonceSecret(dead, timeout=0.2, retries=0), log=_NoLog())
    now = 1_800_000_000.0
    import asyncio

    with pytest.raises(StoreUnavailable):
        asyncio.run(checker.verify((proof(ECKey.generate_key("P-256"), now),), now))


class _NoLog:
    def warning(self, *args: Any, **kwargs: Any) -> None:
        pass


# -- the client's policy (§5.2) ------------------------------------------------------------------


def test_client_that_requires_dpop_gets_no_bearer_token(broker, key):
    """`dpop-required-client`: dpop_bound_access_tokens → a request without a proof is 400
    invalid_dpop_proof (RFC 9449 §5.2 names no code; see app.oauth.dpop.proof_required), the
    assertion not spent; with a proof it gets a DPoP token."""
    c = TestClient("c1")
    broker.call(broker.app.state.admin_service.register, "tests", {**c.metadata(), "dpop_bound_access_tokens": True})
    broker.app.state.directory.invalidate()
    assertion = c.assertion(broker.clock.now)
    r = broker.token(form(assertion))
    assert_dpop_error(r, "invalid_dpop_proof", "This client must send a DPoP proof with every token request.")
    assert rejected(broker)[-1]["reason"] == "dpop_required"
    assert_bound(dpop_token(broker, c, proof(key, broker.clock.now), assertion), key)
    broker.update("c1", dpop_bound_access_tokens=False)
    assert_token(broker.get_token(c))


@pytest.mark.parametrize("value,status", [(True, 201), (False, 201), ("yes", 400), (1, 400)],
                         ids=["true", "false", "string", "number"])
def test_admin_api_dpop_bound_access_tokens(broker, value, status):
    from app.oauth.clients import InvalidClientMetadata

    c = TestClient("c9")
    try:
        record = broker.call(broker.app.state.admin_service.register, "tests",
                             {**c.metadata(), "dpop_bound_access_tokens": value})
    except InvalidClientMetadata as exc:
        assert (400, exc.reason, exc.detail) == (status, "dpop_bound_access_tokens_invalid",
                                                 "dpop_bound_access_tokens must be true or false")
        return
    assert status == 201 and record.dpop_bound_access_tokens is value


@pytest.mark.parametrize("argv,expected", [
    (["--dpop-bound-access-tokens"], {"dpop_bound_access_tokens": True}),
    (["--no-dpop-bound-access-tokens"], {"dpop_bound_access_tokens": False}),
], ids=["on", "off"])
def test_cli_update_flags(argv, expected):
    from app.client.admin_cli import _metadata, build_parser

    args = build_parser().parse_args(["update", "c1", *argv])
    assert _metadata(args) == expected


def test_clients_file_key(tmp_path):
    from app.service.client_metadata import read_clients_file

    c = TestClient("c1")
    path = tmp_path / "clients.json"
    path.write_text(json.dumps({"clients": [{**c.metadata(), "dpop_bound_access_tokens": True}]}))
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys")
    (record,) = read_clients_file(settings, str(path), now=1_800_000_000)
    assert record.dpop_bound_access_tokens is True


# -- metadata, introspection, revocation ---------------------------------------------------------


@pytest.mark.parametrize("path", ["/.well-known/oauth-authorization-server", "/.well-known/openid-configuration"],
                         ids=["rfc8414", "openid-configuration"])
def test_metadata_advertises_dpop_algs(broker, path):
    """RFC 9449 §5.1."""
    doc = broker.http.get(path).json()
    assert doc["dpop_signing_alg_values_supported"] == ["ES256", "ES384", "PS256", "RS256", "Ed25519"]


INTROSPECTOR = TestClient("rs-1", scopes=("broker:introspect",), default_scopes=("broker:introspect",))


def _token_op(broker: Broker, path: str, client: TestClient, token: str) -> httpx.Response:
    data = {"client_assertion_type": URN, "client_assertion": client.assertion(broker.clock.now), "token": token}
    return broker.http.post(path, content=str(httpx.QueryParams(data)),
                            headers={"content-type": "application/x-www-form-urlencoded"})


def test_introspection_reports_cnf_and_revocation_works(broker, c1, key):
    """`dpop-introspection`: RFC 9449 §6.2 (cnf.jkt, token_type DPoP); RFC 7009 as for a bearer token:
    after revocation the token is inactive and the cache never serves it again."""
    broker.register(INTROSPECTOR)
    token = assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="1")), key)["access_token"]
    r = _token_op(broker, "/introspect", INTROSPECTOR, token)
    body = r.json()
    assert (body["active"], body["token_type"], body["cnf"]) == (True, "DPoP", {"jkt": thumbprint(key)})
    bearer = assert_token(broker.get_token(c1))["access_token"]
    plain = _token_op(broker, "/introspect", INTROSPECTOR, bearer).json()
    assert plain["token_type"] == "Bearer" and "cnf" not in plain
    assert _token_op(broker, "/revoke", c1, token).status_code == 200
    assert _token_op(broker, "/introspect", INTROSPECTOR, token).json() == {"active": False}
    again = assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now, jti="2")), key)
    assert again["access_token"] != token


def test_resource_parameter_applies_to_dpop_tokens(broker, c1, key):
    body = assert_bound(dpop_token(broker, c1, proof(key, broker.clock.now), resource=RS2), key)
    assert decode_unverified(body["access_token"])[1]["aud"] == RS2


# -- real Redis, two broker processes -------------------------------------------------------------


@pytest.mark.redis
@pytest.mark.parametrize("quota,reuse,cache_id", _store_variants())
def test_every_script_variant_on_real_redis(real_redis, quota, reuse, cache_id):
    """The same checks as on fakeredis, on redis-server (the scripts take their DPoP KEYS/ARGV off with table.remove)."""
    import asyncio

    async def main() -> None:
        redis = connect(real_redis.url, timeout=0.5, retries=0)
        try:
            await _check_store_variant(RedisTokenStore(redis, quota=quota, timeout=0.5, retries=0), reuse, cache_id)
        finally:
            await redis.aclose()

    asyncio.run(main())


@pytest.mark.redis
def test_dpop_replay_on_real_redis_in_process(real_redis, tmp_path, key):
    clock = FrozenClock()
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=real_redis.url, token_lifetime=300)
    with Broker(settings, clock) as b:
        c = TestClient("c1")
        b.register(c)
        p = proof(key, clock.now)
        assert_bound(dpop_token(b, c, p), key)
        assertion = c.assertion(clock.now)
        assert_dpop_error(dpop_token(b, c, p, assertion), "invalid_dpop_proof",
                          "The DPoP proof was used before: send a new proof.")
        assert_bound(dpop_token(b, c, proof(key, clock.now, jti="fresh"), assertion), key)


@pytest.mark.redis
@pytest.mark.live
def test_two_brokers_share_nonces(real_redis, spawn_broker, key):
    """`dpop-nonce`: the nonce one replica hands out is accepted by the other (one secret in Redis)."""
    from tests.test_replay import _admin_register

    env = {"BROKER_DPOP_NONCE": "on"}
    r1 = spawn_broker(redis_url=real_redis.url, env=env)
    r2 = spawn_broker(redis_url=real_redis.url, env=env)
    c = TestClient("c1")
    _admin_register(r1.url, spawn_broker.keys_dir, c)
    first = httpx.post(r1.url + "/token", data=form(c.assertion()),
                       headers={"DPoP": create_proof(key, alg="ES256", htm="POST", htu=HTU)})
    assert (first.status_code, first.json()["error"]) == (400, "use_dpop_nonce"), first.text
    nonce = first.headers["dpop-nonce"]
    second = httpx.post(r2.url + "/token", data=form(c.assertion()),
                        headers={"DPoP": create_proof(key, alg="ES256", htm="POST", htu=HTU, nonce=nonce)})
    assert second.status_code == 200, second.text
    assert second.json()["token_type"] == "DPoP"
    assert "dpop-nonce" in second.headers


# -- the admin API (a resource server of the broker's own) ----------------------------------------


def _admin_dpop_token(broker: Broker, key: Any) -> str:
    from app.client.admin import load_private_jwk
    from token_broker_jose.assertion import make_client_assertion

    admin_key, alg, kid = load_private_jwk(broker.settings.keys_dir / "admin.jwk")
    assertion = make_client_assertion(admin_key, client_id="broker-admin", issuer=ISS, alg=alg, kid=kid,
                                      now=broker.clock.now)
    r = dpop_token(broker, TestClient("broker-admin"), proof(key, broker.clock.now), assertion,
                   scope="broker:admin", resource=ISS + "/admin")
    return assert_bound(r, key)["access_token"]


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"], ids=["Bearer", "lower-case"])
def test_admin_api_refuses_a_dpop_bound_token_sent_as_bearer(broker, key, scheme):
    """`dpop-bound-token-as-bearer`: the admin API takes Bearer tokens only (RFC 6750); a DPoP-bound
    admin token (``cnf.jkt``) presented there without its proof is refused (RFC 9449 §7.2), or a
    leaked one would work for whoever holds it."""
    token = _admin_dpop_token(broker, key)
    r = broker.http.get("/admin/clients", headers={"authorization": f"{scheme} {token}"})
    assert (r.status_code, r.json()) == (401, {"error": "invalid_token",
                                               "error_description": "The access token is invalid or expired."})
    assert [line["reason"] for line in broker.logs() if line.get("event") == "admin.rejected"] == [
        "token_sender_constrained"]
