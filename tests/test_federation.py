"""Workload identity federation at the token endpoint: platform tokens (Kubernetes projected
service-account tokens, SPIRE JWT-SVIDs, GitHub Actions OIDC tokens) from a loopback issuer
(``tests.federation_issuer``) presented as the client assertion.

Each refusal is checked for its exact answer (the generic ``invalid_client``: nothing tells a
caller which check failed) and for the reason logged with the token's issuer and sub.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from app.config import Settings
from app.oauth.federation import SPIFFE_ASSERTION_TYPE
from app.oauth.trust import trusted_issuer
from tests.conftest import Broker, FrozenClock
from tests.federation_issuer import KUBERNETES_ISSUER, FederationIssuer, SigningKey
from tests.helpers import ISS, RS1, URN, TestClient, b64u, decode_unverified

INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}
SPIFFE_TD = "spiffe://example.org"


@pytest.fixture
def settings(tmp_path: Path, request: pytest.FixtureRequest) -> Settings:
    """``request.param``: a client request quota (``BROKER_CLIENT_QUOTA``, 0 by default), or a dict
    of other settings."""
    param = getattr(request, "param", 0)
    extra = param if isinstance(param, dict) else {"client_quota": param}
    return Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, jwks_uri_allow_http_loopback=True,
                    **extra)


class Platforms:
    """Three issuers on loopback, trusted by the broker, and the clients they map to."""

    def __init__(self, broker: Broker, k8s: FederationIssuer, spire: FederationIssuer, github: FederationIssuer) -> None:
        self.broker, self.k8s, self.spire, self.github = broker, k8s, spire, github
        for client_id in ("payments", "deployer"):
            broker.register(TestClient(client_id))
        # Kubernetes with a static JWKS (kubectl get --raw /openid/v1/jwks): its issuer is not reachable.
        self.trust({"issuer": KUBERNETES_ISSUER, "jwks": k8s.jwks(), "rules": [
            {"client_id": "payments", "claims": {"kubernetes.io.namespace": "payments",
                                                 "kubernetes.io.serviceaccount.name": "api"}},
            {"client_id": "payments", "sub": "system:serviceaccount:payments:worker"}]})
        # SPIRE: the trust domain's bundle endpoint; two rules overlap for .../sa/deploy.
        self.trust({"issuer": SPIFFE_TD, "jwks_uri": spire.jwks_uri, "rules": [
            {"client_id": "payments", "sub_pattern": "spiffe://example.org/ns/payments/sa/*"},
            {"client_id": "deployer", "sub": "spiffe://example.org/ns/payments/sa/deploy"}]})
        # GitHub Actions through OIDC discovery.
        self.trust({"issuer": github.url, "rules": [
            {"client_id": "deployer", "claims": {"repository": "octo-org/payments", "ref": "refs/heads/main"}}]})

    def trust(self, record: dict[str, Any]) -> None:
        self.broker.call(self.broker.app.state.trust_store.put_issuer, trusted_issuer(record, allow_http_loopback=True))
        self.broker.app.state.directory.invalidate()  # what the epoch poll does within 0.25 s

    @property
    def now(self) -> float:
        return self.broker.clock.now

    def post(self, assertion: str, **params: str) -> Any:
        return self.broker.token({"grant_type": "client_credentials", "client_assertion_type": URN,
                                  "client_assertion": assertion, **params})

    def rejected(self) -> dict[str, Any]:
        return [e for e in self.broker.logs() if e.get("event") == "token.rejected"][-1]


@pytest.fixture
def platforms(broker: Broker) -> Iterator[Platforms]:
    with FederationIssuer("RS256") as k8s, FederationIssuer("ES256", spiffe=True) as spire, \
            FederationIssuer("RS256") as github:
        yield Platforms(broker, k8s, spire, github)


def k8s_token(p: Platforms, **kw: Any) -> str:
    return p.k8s.kubernetes_token(p.now, audience=ISS, issuer=KUBERNETES_ISSUER, **kw)


def spire_svid(p: Platforms, **kw: Any) -> str:
    return p.spire.spire_svid(p.now, audience=ISS, **kw)


def github_token(p: Platforms, **kw: Any) -> str:
    return p.github.github_token(p.now, audience=ISS, **kw)


# -- a mapped workload gets a token -------------------------------------------------------------

ACCEPTED = [
    pytest.param(k8s_token, "payments", KUBERNETES_ISSUER, "system:serviceaccount:payments:api", id="kubernetes"),
    pytest.param(spire_svid, "payments", SPIFFE_TD, "spiffe://example.org/ns/payments/sa/api", id="spire"),
    pytest.param(github_token, "deployer", None, "repo:octo-org/payments:ref:refs/heads/main", id="github"),
]


@pytest.mark.parametrize(("make", "client_id", "iss", "sub"), ACCEPTED)
def test_mapped_workload_gets_a_token(platforms: Platforms, make: Callable[..., str], client_id: str,
                                      iss: str | None, sub: str) -> None:
    iss = iss or platforms.github.url
    resp = platforms.post(make(platforms))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["token_type"], body["scope"], body["expires_in"]) == ("Bearer", "read", 300)
    header, claims = decode_unverified(body["access_token"])
    assert header["typ"] == "at+jwt"
    assert (claims["sub"], claims["client_id"], claims["aud"]) == (client_id, client_id, RS1)
    assert claims["federation"] == {"iss": iss, "sub": sub}
    issued = [e for e in platforms.broker.logs() if e.get("event") == "token.issued"][-1]
    assert (issued["client_id"], issued["federated_iss"], issued["federated_sub"]) == (client_id, iss, sub)
    metric = platforms.broker.app.state.metrics.value("broker_federated_assertions_total", issuer=iss,
                                                      client_id=client_id, use="first")
    assert metric == 1


def test_spiffe_assertion_type_and_spiffe_client_id(platforms: Platforms) -> None:
    """draft-ietf-oauth-spiffe-client-auth: its assertion type, and the SPIFFE ID as client_id."""
    svid = spire_svid(platforms)
    resp = platforms.post(svid, client_assertion_type=SPIFFE_ASSERTION_TYPE,
                          client_id="spiffe://example.org/ns/payments/sa/api")
    assert resp.status_code == 200, resp.text
    assert decode_unverified(resp.json()["access_token"])[1]["client_id"] == "payments"
    assert platforms.post(spire_svid(platforms), client_id="payments").status_code == 200


# -- refusals -------------------------------------------------------------------------------------


def _alg_none(p: Platforms) -> str:
    claims = decode_unverified(k8s_token(p))[1]
    return b64u(json.dumps({"alg": "none", "kid": p.k8s.keys[0].kid})) + "." + b64u(json.dumps(claims)) + ".AA"


def _hs256_with_jwks(p: Platforms) -> str:
    """Signed with the published JWKS bytes as an HMAC secret (the classic key-confusion attack)."""
    claims = decode_unverified(k8s_token(p))[1]
    signing_input = b64u(json.dumps({"alg": "HS256", "kid": p.k8s.keys[0].kid})) + "." + b64u(json.dumps(claims))
    secret = json.dumps(p.k8s.jwks()).encode()
    return signing_input + "." + b64u(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())


def _unpublished_key_known_kid(p: Platforms) -> str:
    rogue = SigningKey("RS256")
    rogue.kid = p.k8s.keys[0].kid
    return k8s_token(p, key=rogue)


def _discovery(document: Callable[[FederationIssuer], dict[str, Any]]) -> Callable[[Platforms], str]:
    def make(p: Platforms) -> str:
        p.github.discovery = document(p.github)
        return github_token(p)
    return make


REFUSED = [
    pytest.param(lambda p: p.k8s.kubernetes_token(p.now, audience="https://other.example.test",
                                                  issuer=KUBERNETES_ISSUER), "federation_aud_invalid",
                 "array_without_audience", id="wrong-audience"),
    pytest.param(lambda p: p.k8s.kubernetes_token(p.now, audience=ISS, issuer=KUBERNETES_ISSUER,
                                                  aud=[ISS, "https://other.example.test"]),
                 "federation_aud_invalid", "array_with_other_members", id="audience-with-others"),
    pytest.param(lambda p: p.k8s.kubernetes_token(p.now - 3700, audience=ISS, issuer=KUBERNETES_ISSUER),
                 "federation_expired", None, id="expired"),
    pytest.param(lambda p: k8s_token(p, lifetime=7200), "federation_lifetime_too_long", "lifetime 7200s > 3600s",
                 id="lifetime-over-cap"),
    pytest.param(lambda p: k8s_token(p, nbf=int(p.now) + 600), "federation_not_yet_valid", None, id="not-yet-valid"),
    pytest.param(lambda p: p.k8s.kubernetes_token(p.now, audience=ISS, issuer="https://unknown.example.test"),
                 "federation_issuer_unknown", None, id="unknown-issuer"),
    pytest.param(lambda p: p.spire.spire_svid(p.now, audience=ISS, spiffe_id="spiffe://other.example/ns/a/sa/b"),
                 "federation_issuer_unknown", None, id="unknown-trust-domain"),
    pytest.param(lambda p: k8s_token(p, namespace="billing"), "federation_unmapped", None, id="unmapped-subject"),
    pytest.param(lambda p: spire_svid(p, spiffe_id="spiffe://example.org/ns/payments/sa/deploy"),
                 "federation_ambiguous", "clients deployer, payments", id="ambiguous-mapping"),
    pytest.param(lambda p: k8s_token(p, key=SigningKey("RS256")), "federation_key_unknown", None,
                 id="unpublished-key"),
    pytest.param(_unpublished_key_known_kid, "federation_signature_invalid", None, id="unpublished-key-published-kid"),
    pytest.param(_alg_none, "federation_alg_not_allowed", None, id="alg-none"),
    pytest.param(_hs256_with_jwks, "federation_alg_not_allowed", None, id="hs256-with-jwks"),
    pytest.param(lambda p: p.k8s.sign(decode_unverified(k8s_token(p))[1], {"typ": "at+jwt"}),
                 "federation_typ_invalid", None, id="typ-not-jwt"),
    pytest.param(_discovery(lambda i: {"issuer": i.url, "jwks_uri": "https://169.254.169.254/latest/keys"}),
                 "federation_keys_unavailable", "discovery_jwks_uri_private", id="discovery-private-address"),
    pytest.param(_discovery(lambda i: {"issuer": "https://token.actions.githubusercontent.com",
                                       "jwks_uri": i.jwks_uri}),
                 "federation_keys_unavailable", "discovery_issuer_mismatch", id="discovery-issuer-mismatch"),
]


@pytest.mark.parametrize(("make", "reason", "detail"), REFUSED)
def test_refused(platforms: Platforms, make: Callable[[Platforms], str], reason: str, detail: str | None) -> None:
    token = make(platforms)
    resp = platforms.post(token)
    assert (resp.status_code, resp.json()) == (401, INVALID_CLIENT)
    line = platforms.rejected()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "==="))
    assert (line["reason"], line.get("detail"), line["client_id"]) == (reason, detail, None)
    assert line["federated_sub"] == claims["sub"]
    assert line["federated_iss"] == (claims["iss"] if "iss" in claims else "spiffe://" + claims["sub"].split("/")[2])


def test_discovery_to_a_private_address_is_logged(platforms: Platforms) -> None:
    platforms.post(_discovery(lambda i: {"issuer": i.url, "jwks_uri": "https://10.1.2.3/keys"})(platforms))
    failed = [e for e in platforms.broker.logs() if e.get("event") == "federation.keys_fetch_failed"]
    assert [(e["issuer"], e["reason"]) for e in failed] == [(platforms.github.url, "discovery_jwks_uri_private")]
    assert platforms.github.hits == ["/.well-known/openid-configuration"]  # the inward URL was never fetched


@pytest.mark.parametrize("iss", [
    pytest.param("https://x.example/\ud800", id="lone-surrogate"),
    pytest.param("https://x.example/\u00e9", id="non-ascii"),
    pytest.param("https://x.example/" + "a" * 3000, id="longer-than-any-record"),
])
def test_issuer_no_record_can_have_is_unknown(platforms: Platforms, iss: str) -> None:
    """`federated-unknown-issuer`: an unsigned token whose ``iss`` no trusted-issuer record can hold
    (records are ASCII URLs of at most 2048 characters). A lone surrogate could not even be sent to
    Redis: it was a 503 with ``token.store_unavailable`` logged at error level, never counted by the
    rate limiter, for any caller."""
    now = int(platforms.now)
    claims = {"iss": iss, "sub": "s", "aud": ISS, "exp": now + 60, "iat": now}
    token = b64u(json.dumps({"alg": "RS256"})) + "." + b64u(json.dumps(claims)) + ".AAAA"
    resp = platforms.post(token)
    assert (resp.status_code, resp.json(), platforms.rejected()["reason"]) == (401, INVALID_CLIENT,
                                                                              "federation_issuer_unknown")
    assert [e for e in platforms.broker.logs() if e.get("level") == "error"] == []


@pytest.mark.parametrize(("params", "reason"), [
    pytest.param({"client_id": "deployer"}, "client_id_mismatch", id="client-id-of-another-client"),
    pytest.param({"client_assertion_type": SPIFFE_ASSERTION_TYPE}, "federation_type_mismatch",
                 id="spiffe-type-for-a-kubernetes-token"),
])
def test_form_must_agree_with_the_token(platforms: Platforms, params: dict[str, str], reason: str) -> None:
    resp = platforms.post(k8s_token(platforms), **params)
    assert (resp.status_code, resp.json(), platforms.rejected()["reason"]) == (401, INVALID_CLIENT, reason)


def test_disabled_client_is_refused(platforms: Platforms) -> None:
    platforms.broker.update("payments", enabled=False)
    resp = platforms.post(k8s_token(platforms))
    assert (resp.status_code, resp.json(), platforms.rejected()["reason"]) == (401, INVALID_CLIENT,
                                                                               "federation_client_disabled")


def test_admin_client_is_refused(platforms: Platforms) -> None:
    # The admin API refuses a rule naming an admin client, but the clients file may make a mapped
    # client admin later: the token endpoint refuses it then too.
    broker = platforms.broker
    record = broker.call(broker.app.state.registry.get, "payments")
    broker.call(broker.app.state.registry.put, msgspec.structs.replace(record, admin=True, version=record.version + 1))
    broker.app.state.directory.invalidate()
    resp = platforms.post(k8s_token(platforms))
    assert (resp.status_code, resp.json(), platforms.rejected()["reason"]) == (401, INVALID_CLIENT,
                                                                               "federation_client_admin")


# -- keys, replay, reuse, cache -------------------------------------------------------------------


def test_key_rotation_is_picked_up_without_restart(platforms: Platforms) -> None:
    assert platforms.post(github_token(platforms)).status_code == 200
    fetches = platforms.github.hits.count("/jwks")
    new = platforms.github.rotate()
    resp = platforms.post(github_token(platforms, key=new))
    assert resp.status_code == 200, resp.text
    assert platforms.github.hits.count("/jwks") == fetches + 1  # one refetch, for the unknown kid
    fetched = [e for e in platforms.broker.logs() if e.get("event") == "federation.keys_fetched"]
    assert fetched[-1]["kids"] == [new.kid]


def test_single_use_issuer_refuses_a_replay(platforms: Platforms) -> None:
    platforms.trust({"issuer": platforms.github.url, "single_use": True, "rules": [
        {"client_id": "deployer", "claims": {"repository": "octo-org/payments"}}]})
    token = github_token(platforms)
    assert platforms.post(token).status_code == 200
    resp = platforms.post(token)
    assert (resp.status_code, resp.json(), platforms.rejected()["reason"]) == (401, INVALID_CLIENT, "jti_replayed")
    replay = [e for e in platforms.broker.logs() if e.get("event") == "replay.rejected"][-1]
    assert (replay["client_id"], replay["federated_iss"]) == ("deployer", platforms.github.url)
    assert platforms.post(github_token(platforms)).status_code == 200  # another token of the workload
    metrics = platforms.broker.app.state.metrics
    assert metrics.value("broker_federated_assertions_total", issuer=platforms.github.url, client_id="deployer",
                         use="single_use") == 2


@pytest.mark.parametrize("settings", [pytest.param({"clock_skew": 0, "leeway": 10}, id="one-replica-no-skew")],
                         indirect=True)
def test_single_use_record_outlives_a_token_issued_ahead(platforms: Platforms) -> None:
    """A token whose iat is up to the leeway ahead of the broker's clock is accepted until exp +
    leeway; its single-use record must last that long too (it was capped at max_lifetime + leeway +
    skew from now, 10 s short here: a replay window)."""
    p = platforms
    p.trust({"issuer": p.github.url, "single_use": True, "max_lifetime": 600, "max_token_age": 600, "rules": [
        {"client_id": "deployer", "claims": {"repository": "octo-org/payments"}}]})
    now = int(p.now)
    token = p.github.github_token(now + 10, audience=ISS, exp=now + 10 + 600, nbf=now)
    assert p.post(token).status_code == 200
    redis = p.broker.app.state.registry.redis
    replay_keys = [k for k in p.broker.call(redis.keys, "*") if b":replay:" in k]
    ttl_ms = [p.broker.call(redis.pttl, k) for k in replay_keys]
    accepted_for_ms = (now + 10 + 600 + 10 - now) * 1000  # exp + leeway
    assert len(ttl_ms) == 1 and ttl_ms[0] >= accepted_for_ms - 1000, (ttl_ms, accepted_for_ms)


def test_withdrawn_keys_are_not_kept(platforms: Platforms) -> None:
    """An issuer that answers with a key set holding no usable key has withdrawn its keys (a
    compromised one removed): a token signed with the old key is refused from the next fetch on
    (before: kept as if the fetch had failed, for ever)."""
    p = platforms
    old = p.github.keys[0]
    assert p.post(github_token(p)).status_code == 200
    p.github.keys = []
    p.broker.clock.advance(301)  # the fetched set's cache TTL
    resp = p.post(github_token(p, key=old))
    line = p.rejected()
    assert (resp.status_code, line["reason"], line.get("detail")) == (401, "federation_keys_unavailable", "no_usable_keys")
    failed = [e for e in p.broker.logs() if e.get("event") == "federation.keys_fetch_failed"][-1]
    assert (failed["kept"], failed["withdrawn"]) == ([], [old.kid])


def test_kept_keys_expire_after_max_stale(platforms: Platforms) -> None:
    """While the issuer's fetches fail, the keys held are used until BROKER_JWKS_URI_MAX_STALE (1 h)
    after they were fetched, then refused: whoever can block the broker's fetches cannot keep a
    withdrawn key working for ever."""
    p = platforms
    kid = p.github.keys[0].kid
    assert p.post(github_token(p)).status_code == 200
    p.github.discovery = {"issuer": "https://elsewhere.example", "jwks_uri": p.github.jwks_uri}  # every fetch fails
    p.broker.clock.advance(301)
    assert p.post(github_token(p)).status_code == 200  # kept: the issuer is only unreachable
    failed = [e for e in p.broker.logs() if e.get("event") == "federation.keys_fetch_failed"][-1]
    assert (failed["reason"], failed["kept"]) == ("discovery_issuer_mismatch", [kid])
    p.broker.clock.advance(3600 - 301)
    resp = p.post(github_token(p))
    line = p.rejected()
    assert (resp.status_code, line["reason"], line.get("detail")) == (401, "federation_keys_unavailable",
                                                                     "discovery_issuer_mismatch")
    expired = [e for e in p.broker.logs() if e.get("event") == "federation.keys_expired"]
    assert [e["kids"] for e in expired] == [[kid]]


def test_single_use_issuer_requires_a_jti(platforms: Platforms) -> None:
    platforms.trust({"issuer": SPIFFE_TD, "jwks_uri": platforms.spire.jwks_uri, "single_use": True, "rules": [
        {"client_id": "payments", "sub_pattern": "spiffe://example.org/ns/payments/sa/*"}]})
    resp = platforms.post(spire_svid(platforms))  # SPIRE writes no jti
    assert (resp.status_code, resp.json(), platforms.rejected()["reason"]) == (401, INVALID_CLIENT,
                                                                               "federation_jti_missing")


@pytest.mark.parametrize("settings", [pytest.param(2, id="quota-2")], indirect=True)
def test_reuse_until_exp_is_counted_and_bounded_by_the_quota(platforms: Platforms) -> None:
    token = k8s_token(platforms)
    first, again = platforms.post(token), platforms.post(token)
    assert (first.status_code, again.status_code) == (200, 200)
    assert again.json()["access_token"] == first.json()["access_token"]  # the cached token
    metrics = platforms.broker.app.state.metrics
    counts = [metrics.value("broker_federated_assertions_total", issuer=KUBERNETES_ISSUER, client_id="payments",
                            use=use) for use in ("first", "reuse")]
    assert counts == [1, 1]
    resp = platforms.post(token)  # each reuse counts toward the client's quota
    assert (resp.status_code, resp.json()["error"], platforms.rejected()["reason"]) == (429, "slow_down",
                                                                                        "quota_exceeded")


def test_two_workloads_of_one_client_never_share_a_token(platforms: Platforms) -> None:
    api, worker = platforms.post(k8s_token(platforms)), platforms.post(k8s_token(platforms, name="worker"))
    assert (api.status_code, worker.status_code) == (200, 200)
    assert api.json()["access_token"] != worker.json()["access_token"]
    subs = [decode_unverified(r.json()["access_token"])[1]["federation"]["sub"] for r in (api, worker)]
    assert subs == ["system:serviceaccount:payments:api", "system:serviceaccount:payments:worker"]
    assert [e["cache"] for e in platforms.broker.logs() if e.get("event") == "token.issued"] == ["mint", "mint"]


def test_removed_issuer_is_refused_after_the_epoch_poll(platforms: Platforms) -> None:
    assert platforms.post(k8s_token(platforms)).status_code == 200
    broker = platforms.broker
    assert broker.call(broker.app.state.trust_store.delete_issuer, KUBERNETES_ISSUER) is True
    broker.call(broker.app.state.directory.refresh)  # the poll: the epoch moved
    resp = platforms.post(k8s_token(platforms))
    assert (resp.status_code, platforms.rejected()["reason"]) == (401, "federation_issuer_unknown")


def test_spiffe_assertion_type_is_refused_for_a_private_key_jwt_assertion(broker: Broker, c1: TestClient) -> None:
    """The jwt-spiffe type says "this is a JWT-SVID"; a client's own assertion keeps the jwt-bearer
    type (before: accepted as if it were jwt-bearer)."""
    resp = broker.get_token(c1, client_assertion_type=SPIFFE_ASSERTION_TYPE)
    rejected = [e for e in broker.logs() if e.get("event") == "token.rejected"][-1]
    assert (resp.status_code, resp.json(), rejected["reason"]) == (401, INVALID_CLIENT, "federation_type_mismatch")


@pytest.mark.parametrize("sub", [
    pytest.param("system:serviceaccount:payments:api\n2026-12-02 INFO forged log line", id="newline"),
    pytest.param("system:serviceaccount:payments:api\x1b[2J", id="escape"),
    pytest.param("system:serviceaccount:payments:api\x00", id="nul"),
    pytest.param("system:serviceaccount:payments:api\u0085", id="c1-next-line"),
    pytest.param("system:serviceaccount:payments:api\u2028", id="line-separator"),
])
def test_sub_with_control_characters_is_refused(platforms: Platforms, sub: str) -> None:
    """The federated sub is copied into the access token and the logs of every resource server:
    printable only, even when a rule would map it (the claim conditions here match)."""
    resp = platforms.post(k8s_token(platforms, sub=sub))
    assert (resp.status_code, resp.json(), platforms.rejected()["reason"]) == (401, INVALID_CLIENT,
                                                                               "federation_sub_invalid")


def test_private_key_jwt_tokens_carry_no_federation_claim(broker: Broker, clock: FrozenClock, c1: TestClient) -> None:
    resp = broker.get_token(c1)
    assert resp.status_code == 200
    assert sorted(decode_unverified(resp.json()["access_token"])[1]) == ["aud", "client_id", "exp", "iat", "iss",
                                                                          "jti", "scope", "sub"]


def test_a_workload_revokes_its_own_token(platforms: Platforms) -> None:
    """/revoke authenticates clients on the same path as /token: a workload token works there too."""
    token = k8s_token(platforms)
    access = platforms.post(token).json()["access_token"]
    resp = platforms.broker.http.post("/revoke", content=str(httpx.QueryParams(
        {"token": access, "client_assertion_type": URN, "client_assertion": token})),
        headers={"content-type": "application/x-www-form-urlencoded"})
    assert (resp.status_code, resp.content) == (200, b"")
    assert platforms.post(k8s_token(platforms)).json()["access_token"] != access  # the revoked one is not served


def test_an_ec_p384_bundle_key_without_alg_is_bound_to_es384(platforms: Platforms) -> None:
    """SPIFFE bundles publish keys without alg: the curve decides (never ES256 for a P-384 key)."""
    from joserfc.jwk import ECKey

    key = SigningKey("ES256")
    key.alg, key.key = "ES384", ECKey.generate_key("P-384")
    platforms.spire.keys = [key]
    platforms.trust({"issuer": SPIFFE_TD, "jwks": platforms.spire.jwks(), "rules": [
        {"client_id": "payments", "sub_pattern": "spiffe://example.org/ns/payments/sa/*"}]})
    assert platforms.post(spire_svid(platforms)).status_code == 200


def test_a_lost_registry_answers_503_for_workload_tokens_too(platforms: Platforms) -> None:
    broker = platforms.broker
    broker.call(broker.app.state.registry.redis.delete, "{tb:registry}:id")
    broker.call(broker.app.state.directory.refresh)  # the poll sees the marker gone
    resp = platforms.post(k8s_token(platforms))
    assert (resp.status_code, resp.json()["error"]) == (503, "temporarily_unavailable")
