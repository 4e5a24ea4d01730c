"""Trusted-issuer records and mapping rules (``app.oauth.trust``): what an operator may store, and
which client a verified platform token maps to."""

from __future__ import annotations

from typing import Any

import pytest

from app.oauth.clients import InvalidClientMetadata
from app.oauth.federation import issuer_keys
from app.oauth.trust import (
    AmbiguousMapping,
    TrustedIssuer,
    claim_at,
    decode_issuer,
    encode_issuer,
    match_rules,
    spiffe_trust_domain,
    trusted_issuer,
)
from token_broker_jose.credentials import generate_key_pair

K8S = "https://kubernetes.default.svc.cluster.local"


def k8s_claims(namespace: str = "payments", name: str = "api") -> dict[str, Any]:
    return {
        "iss": K8S, "sub": f"system:serviceaccount:{namespace}:{name}", "aud": ["https://broker.example"],
        "kubernetes.io": {"namespace": namespace, "serviceaccount": {"name": name, "uid": "0b1d"},
                          "pod": {"name": "api-7d9", "uid": "9f"}},
    }


def github_claims(repository: str = "octo/app", ref: str = "refs/heads/main") -> dict[str, Any]:
    return {"iss": "https://token.actions.githubusercontent.com", "sub": f"repo:{repository}:ref:{ref}",
            "repository": repository, "ref": ref, "repository_owner": repository.split("/")[0]}


def record(*rules: dict[str, Any], **fields: Any) -> TrustedIssuer:
    return trusted_issuer({"issuer": K8S, "rules": list(rules), **fields})


MATCHES = [
    ("k8s-sub", {"client_id": "pay", "sub": "system:serviceaccount:payments:api"}, k8s_claims(), "pay"),
    ("k8s-sub-other-sa", {"client_id": "pay", "sub": "system:serviceaccount:payments:api"}, k8s_claims(name="web"),
     None),
    ("k8s-claims", {"client_id": "pay", "claims": {"kubernetes.io.namespace": "payments",
                                                    "kubernetes.io.serviceaccount.name": "api"}}, k8s_claims(), "pay"),
    ("k8s-claims-other-ns", {"client_id": "pay", "claims": {"kubernetes.io.namespace": "payments"}},
     k8s_claims(namespace="billing"), None),
    ("k8s-pattern-namespace", {"client_id": "pay", "sub_pattern": "system:serviceaccount:payments:*"},
     k8s_claims(name="worker"), "pay"),
    ("k8s-pattern-star-stops-at-colon", {"client_id": "pay", "sub_pattern": "system:serviceaccount:*"},
     k8s_claims(), None),
    ("spiffe-pattern", {"client_id": "pay", "sub_pattern": "spiffe://example.org/ns/payments/sa/*"},
     {"sub": "spiffe://example.org/ns/payments/sa/api"}, "pay"),
    ("spiffe-pattern-star-stops-at-slash", {"client_id": "pay", "sub_pattern": "spiffe://example.org/ns/*"},
     {"sub": "spiffe://example.org/ns/payments/sa/api"}, None),
    ("spiffe-double-star", {"client_id": "pay", "sub_pattern": "spiffe://example.org/ns/payments/**"},
     {"sub": "spiffe://example.org/ns/payments/sa/api"}, "pay"),
    ("spiffe-other-domain", {"client_id": "pay", "sub_pattern": "spiffe://example.org/**"},
     {"sub": "spiffe://example.org.evil/ns/payments"}, None),
    ("github-repo-ref", {"client_id": "ci", "claims": {"repository": "octo/app", "ref": "refs/heads/main"}},
     github_claims(), "ci"),
    ("github-other-branch", {"client_id": "ci", "claims": {"repository": "octo/app", "ref": "refs/heads/main"}},
     github_claims(ref="refs/heads/dev"), None),
    ("github-lookalike-repo", {"client_id": "ci", "sub_pattern": "repo:octo/app:ref:refs/heads/*"},
     github_claims(repository="octo/app-evil"), None),
    ("pattern-is-literal", {"client_id": "pay", "sub_pattern": "a.b+c?*"}, {"sub": "a.b+c?x"}, "pay"),
    ("pattern-regex-not-interpreted", {"client_id": "pay", "sub_pattern": "a.b*"}, {"sub": "aXbc"}, None),
    ("claim-not-string", {"client_id": "pay", "claims": {"n": "1"}}, {"sub": "x", "n": 1}, None),
    ("claim-absent", {"client_id": "pay", "claims": {"kubernetes.io.namespace": "payments"}}, {"sub": "x"}, None),
]


@pytest.mark.parametrize(("rule", "claims", "client_id"), [m[1:] for m in MATCHES], ids=[m[0] for m in MATCHES])
def test_mapping(rule, claims, client_id) -> None:
    assert match_rules(record(rule), claims) == client_id


def test_two_clients_matching_is_ambiguous() -> None:
    issuer = record({"client_id": "a", "sub_pattern": "system:serviceaccount:payments:*"},
                    {"client_id": "b", "claims": {"kubernetes.io.namespace": "payments"}})
    with pytest.raises(AmbiguousMapping) as caught:
        match_rules(issuer, k8s_claims())
    assert caught.value.client_ids == ("a", "b")


def test_two_rules_of_one_client_are_not_ambiguous() -> None:
    issuer = record({"client_id": "a", "sub_pattern": "system:serviceaccount:payments:*"},
                    {"client_id": "a", "claims": {"kubernetes.io.namespace": "payments"}})
    assert match_rules(issuer, k8s_claims()) == "a"


def test_claim_path_takes_the_longest_member() -> None:
    claims = {"kubernetes.io": {"namespace": "right"}, "kubernetes": {"io": {"namespace": "wrong"}}}
    assert claim_at(claims, "kubernetes.io.namespace") == "right"
    assert claim_at({"a": "x"}, "a.b") is None


@pytest.mark.parametrize(("sub", "domain"), [
    ("spiffe://example.org/ns/a", "spiffe://example.org"), ("spiffe://example.org", "spiffe://example.org"),
    ("spiffe://Example.org/x", None), ("https://example.org/x", None), (5, None)],
    ids=["path", "bare", "upper-case", "https", "not-string"])
def test_spiffe_trust_domain(sub, domain) -> None:
    assert spiffe_trust_domain(sub) == domain


def test_record_round_trips_and_defaults() -> None:
    _, pub = generate_key_pair("RS256")
    rec = record({"client_id": "pay", "sub": "s"}, jwks={"keys": [pub]})
    assert decode_issuer(encode_issuer(rec)) == rec
    assert (rec.audience, rec.allow_other_audiences, rec.single_use, rec.max_token_age, rec.max_lifetime) == (
        None, False, False, 3600, 3600)
    assert rec.discovery_url() is None
    assert record({"client_id": "pay", "sub": "s"}).discovery_url() == K8S + "/.well-known/openid-configuration"


_, PUBLIC = generate_key_pair("ES256")
_PRIVATE, _ = generate_key_pair("ES256")
REFUSED = [
    ("not-object", [], "trust_invalid"),
    ("http-issuer", {"issuer": "http://issuer.example"}, "trust_url_invalid"),
    ("http-loopback-not-allowed", {"issuer": "http://127.0.0.1:8080"}, "trust_url_invalid"),
    ("issuer-credentials", {"issuer": "https://u:p@issuer.example"}, "trust_url_invalid"),
    ("spiffe-path", {"issuer": "spiffe://example.org/ns", "jwks_uri": "https://b.example/keys"},
     "trust_issuer_invalid"),
    ("spiffe-without-keys", {"issuer": "spiffe://example.org"}, "trust_keys_invalid"),
    ("two-key-sources", {"issuer": K8S, "jwks": {"keys": [PUBLIC]}, "jwks_uri": "https://b.example/k"},
     "trust_keys_invalid"),
    ("jwks-empty", {"issuer": K8S, "jwks": {"keys": []}}, "trust_keys_invalid"),
    ("jwks-private-key", {"issuer": K8S, "jwks": {"keys": [_PRIVATE]}}, "jwk_private"),
    ("alg-hs256", {"issuer": K8S, "algs": ["HS256"]}, "trust_algs_invalid"),
    ("alg-none", {"issuer": K8S, "algs": ["none"]}, "trust_algs_invalid"),
    ("algs-empty", {"issuer": K8S, "algs": []}, "trust_algs_invalid"),
    ("lifetime-too-long", {"issuer": K8S, "max_lifetime": 86401}, "trust_invalid"),
    ("unknown-field", {"issuer": K8S, "trust_everything": True}, "trust_invalid"),
    ("rule-without-condition", {"issuer": K8S, "rules": [{"client_id": "a"}]}, "trust_rule_invalid"),
    ("rule-only-wildcards", {"issuer": K8S, "rules": [{"client_id": "a", "sub_pattern": "**"}]},
     "trust_rule_invalid"),
    # Backtracking: "repo:**/**/**/**:environment:prod" took 6.5 s on a 1024-character sub.
    ("rule-two-double-stars", {"issuer": K8S, "rules": [{"client_id": "a", "sub_pattern": "repo:**/**:env:prod"}]},
     "trust_rule_invalid"),
    ("rule-two-stars-in-a-segment", {"issuer": K8S, "rules": [{"client_id": "a", "sub_pattern": "repo:a*b*:ref:x"}]},
     "trust_rule_invalid"),
    ("rule-pattern-with-nul", {"issuer": K8S, "rules": [{"client_id": "a", "sub_pattern": "repo:\x00:ref:x"}]},
     "trust_rule_invalid"),
    ("rule-bad-client-id", {"issuer": K8S, "rules": [{"client_id": "a/b", "sub": "x"}]}, "trust_rule_invalid"),
    ("rule-unknown-field", {"issuer": K8S, "rules": [{"client_id": "a", "sub": "x", "regex": ".*"}]},
     "trust_rule_invalid"),
    ("rules-not-list", {"issuer": K8S, "rules": {"client_id": "a"}}, "trust_rule_invalid"),
]


@pytest.mark.parametrize(("value", "reason"), [r[1:] for r in REFUSED], ids=[r[0] for r in REFUSED])
def test_refused_records(value, reason) -> None:
    with pytest.raises(InvalidClientMetadata) as caught:
        trusted_issuer(value)
    assert caught.value.reason == reason


@pytest.mark.parametrize("pattern", [
    pytest.param("repo:**:ref:*", id="double-star-and-star"),
    pytest.param("**a*", id="double-star-then-star-in-one-segment"),
    pytest.param("*/*/*/*/*/*/*/*/**/*/*/*z", id="a-star-per-segment"),
])
def test_allowed_patterns_match_a_long_sub_quickly(pattern: str) -> None:
    """The patterns the rules allow: every match of a 1024-character sub is at most quadratic (the
    worst of these takes milliseconds); measured as the regex engine's steps would be flaky, so the
    test bounds the work with a sub that made the refused shapes take seconds."""
    rule = record({"client_id": "pay", "sub_pattern": pattern}).rules[0]
    assert rule.sub_pattern == pattern
    for sub in ("repo:" + "a/" * 509, "a" * 1024, "a:" * 512, "ab/" * 341):
        match_rules(record({"client_id": "pay", "sub_pattern": pattern}), {"sub": sub})


def test_rsa_key_without_alg_is_checked_as_rs256() -> None:
    """Kubernetes, SPIRE and cloud issuers sign RS256; a JWKS key without alg was bound to PS256
    (the first RSA alg of the defaults) and every token of such an issuer was refused."""
    _, pub = generate_key_pair("RS256")
    jwk = {k: v for k, v in pub.items() if k != "alg"}
    rec = record({"client_id": "pay", "sub": "s"}, jwks={"keys": [jwk]})
    keys, refused = issuer_keys(rec.jwks, rec)
    assert ([k["alg"] for k in keys], refused) == (["RS256"], [])


def test_http_loopback_issuer_only_when_allowed() -> None:
    assert trusted_issuer({"issuer": "http://127.0.0.1:8080"}, allow_http_loopback=True).issuer == "http://127.0.0.1:8080"
