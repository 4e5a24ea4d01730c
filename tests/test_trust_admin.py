"""Trusted issuers of workload identity federation through the admin API (``app.service.trust_admin``,
``/admin/trusted-issuers``; docs/workload-identity.md): create-or-replace, show, list and remove, the
exact error answers and their ``admin.rejected`` lines, the audit lines of each change, and the
refusals on top of ``app.oauth.trust.trusted_issuer`` (attack matrix: `federation-trust-admin`)."""

from __future__ import annotations

from typing import Any

import pytest
from joserfc.jwk import ECKey

from app.oauth.trust import MAX_ISSUERS
from tests.conftest import Broker
from tests.helpers import ISS, TestClient
from tests.test_admin_api import admin_headers

K8S = "https://oidc.k8s.example"
PATH = "/admin/trusted-issuers"


def jwks() -> dict[str, Any]:
    key = ECKey.generate_key("P-256").as_dict(private=False)
    return {"keys": [{**key, "kid": "k1", "alg": "ES256", "use": "sig"}]}


def k8s_issuer(issuer: str = K8S, client_id: str = "payments-api", **extra: Any) -> dict[str, Any]:
    return {"issuer": issuer, "jwks": jwks(), "rules": [
        {"client_id": client_id, "claims": {"kubernetes.io.namespace": "payments",
                                            "kubernetes.io.serviceaccount.name": "api"}}], **extra}


@pytest.fixture
def admin(broker: Broker) -> dict[str, str]:
    broker.register(TestClient("payments-api"))
    return admin_headers(broker)


def events(broker: Broker, name: str) -> list[dict[str, Any]]:
    return [e for e in broker.logs() if e["event"] == name]


def test_create_show_list_replace_remove(broker: Broker, admin: dict[str, str]) -> None:
    body = k8s_issuer()
    r = broker.http.put(PATH, json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert r.json() == {"result": "created", "trusted_issuer": body}
    assert r.headers["cache-control"] == "no-store"
    assert broker.http.get(PATH, params={"issuer": K8S}, headers=admin).json() == body
    assert broker.http.get(PATH, headers=admin).json() == {"trusted_issuers": [body]}
    r = broker.http.put(PATH, json=body, headers=admin)
    assert (r.status_code, r.json()) == (200, {"result": "unchanged", "trusted_issuer": body})
    changed = {**body, "max_token_age": 600, "single_use": True}
    r = broker.http.put(PATH, json=changed, headers=admin)
    assert (r.status_code, r.json()) == (200, {"result": "replaced", "trusted_issuer": changed})
    r = broker.http.delete(PATH, params={"issuer": K8S}, headers=admin)
    assert (r.status_code, r.content) == (204, b"")
    assert broker.http.get(PATH, headers=admin).json() == {"trusted_issuers": []}
    [added] = events(broker, "trust.added")
    assert {k: added[k] for k in ("admin", "issuer", "key_source", "rules", "client_ids", "single_use")} == {
        "admin": "broker-admin", "issuer": K8S, "key_source": "jwks", "rules": 1, "client_ids": ["payments-api"],
        "single_use": False}
    [replaced] = events(broker, "trust.replaced")
    assert (replaced["issuer"], replaced["single_use"]) == (K8S, True)
    [removed] = events(broker, "trust.removed")
    assert (removed["admin"], removed["issuer"]) == ("broker-admin", K8S)
    assert all(e.get("request_id") for e in (added, replaced, removed))


def test_records_are_listed_sorted_by_issuer(broker: Broker, admin: dict[str, str]) -> None:
    for issuer in ("https://b.example", "spiffe://prod.example", "https://a.example"):
        body = k8s_issuer(issuer)
        assert broker.http.put(PATH, json=body, headers=admin).status_code == 201
    listed = broker.http.get(PATH, headers=admin).json()["trusted_issuers"]
    assert [r["issuer"] for r in listed] == ["https://a.example", "https://b.example", "spiffe://prod.example"]


NOT_FOUND = {"error": "not_found", "error_description": "No such trusted issuer."}
PARAM = {"error": "invalid_client_metadata",
         "error_description": "name one trusted issuer: ?issuer=<its issuer identifier, URL-encoded>"}


@pytest.mark.parametrize("method, params, status, body", [
    ("GET", {"issuer": K8S}, 404, NOT_FOUND),
    ("DELETE", {"issuer": K8S}, 404, NOT_FOUND),
    ("DELETE", {}, 400, PARAM),
    ("DELETE", [("issuer", K8S), ("issuer", "https://other.example")], 400, PARAM),
    ("GET", [("issuer", K8S), ("issuer", K8S)], 400, PARAM),
], ids=["show-unknown", "remove-unknown", "remove-without-issuer", "remove-two-issuers", "show-two-issuers"])
def test_addressing_refusals_are_answered_and_logged(broker: Broker, admin: dict[str, str], method: str,
                                                     params: Any, status: int, body: dict[str, str]) -> None:
    r = broker.http.request(method, PATH, params=params, headers=admin)
    assert (r.status_code, r.json()) == (status, body)
    [line] = events(broker, "admin.rejected")
    assert {k: line[k] for k in ("admin", "method", "path", "status", "error", "reason")} == {
        "admin": "broker-admin", "method": method, "path": PATH, "status": status, "error": body["error"],
        "reason": "not_found" if status == 404 else "issuer_param_invalid"}


def test_trusted_issuer_calls_need_an_admin_token(broker: Broker) -> None:
    r = broker.http.put(PATH, json=k8s_issuer(), headers={"authorization": "Bearer x.y.z"})
    assert (r.status_code, r.json()["error"]) == (401, "invalid_token")
    r = broker.http.get(PATH)
    assert (r.status_code, r.json()) == (401, {})


def _rule(**rule: Any) -> dict[str, Any]:
    return {"issuer": K8S, "jwks": jwks(), "rules": [rule]}


BAD: dict[str, tuple[Any, str, str]] = {
    # id: (body, reason, error_description)
    "not-an-object": ([], "trust_invalid", "a trusted issuer must be a JSON object"),
    "unknown-field": ({**k8s_issuer(), "audiences": ["x"]}, "trust_invalid",
                      "trusted issuer: Object contains unknown field `audiences`"),
    "http-issuer": (k8s_issuer("http://oidc.k8s.example"), "trust_url_invalid",
                    "issuer must be an https URL without credentials or fragment"),
    "issuer-bad-port": (k8s_issuer("https://oidc.k8s.example:99999"), "trust_url_invalid", "issuer is not a URL"),
    "spiffe-path": (k8s_issuer("spiffe://prod.example/ns"), "trust_issuer_invalid",
                    "a SPIFFE issuer is spiffe://<trust domain> (lower-case, no path)"),
    "spiffe-without-keys": ({"issuer": "spiffe://prod.example", "rules": []}, "trust_keys_invalid",
                            "a SPIFFE trust domain needs jwks or jwks_uri (its bundle endpoint)"),
    "jwks-and-jwks-uri": (k8s_issuer(jwks_uri="https://oidc.k8s.example/keys"), "trust_keys_invalid",
                          "set at most one of jwks and jwks_uri (neither: OIDC discovery)"),
    "private-jwks": ({**k8s_issuer(), "jwks": {"keys": [ECKey.generate_key("P-256").as_dict(private=True)
                                                        | {"alg": "ES256"}]}}, "jwk_private",
                     "the key holds private key material; register only the public key"),
    "hs256": (k8s_issuer(algs=["HS256"]), "trust_algs_invalid",
              "algs must be a non-empty subset of ES256, ES384, PS256, RS256, Ed25519"),
    "age-over-a-day": (k8s_issuer(max_token_age=86401), "trust_invalid",
                       "max_token_age and max_lifetime must be 1-86400 seconds"),
    "rule-matching-everything": (_rule(client_id="payments-api"), "trust_rule_invalid",
                                 "a mapping rule must set sub, sub_pattern or claims (a rule matching every token "
                                 "of the issuer is refused)"),
    "pattern-without-literal": (_rule(client_id="payments-api", sub_pattern="**"), "trust_rule_invalid",
                                "sub_pattern must have a literal part"),
    "rule-unknown-client": (k8s_issuer(client_id="payment-api"), "trust_client_unknown",
                            "mapping rule client_id 'payment-api' is not registered: register the client first "
                            "(`broker_admin.py register`), then map tokens to it"),
    "rule-admin-client": (k8s_issuer(client_id="broker-admin"), "trust_client_admin",
                          "mapping rule client_id 'broker-admin' is an admin client: admin rights come from the "
                          "operator's keys, never from a platform token"),
    "the-broker-itself": (k8s_issuer(ISS), "trust_issuer_self",
                          "the broker's own issuer cannot be a trusted issuer: its access tokens are not client "
                          "assertions"),
    "private-jwks-uri": ({**k8s_issuer(), "jwks": None, "jwks_uri": "https://10.0.0.7/openid/v1/jwks"},
                         "trust_url_refused", "jwks_uri points at a private, loopback or link-local address"),
    "metadata-address-discovery": ({**k8s_issuer("https://169.254.169.254"), "jwks": None}, "trust_url_refused",
                                   "issuer points at a private, loopback or link-local address"),
    "loopback-http-not-allowed": ({**k8s_issuer(), "jwks": None, "jwks_uri": "http://127.0.0.1:9/jwks"},
                                  "trust_url_invalid", "jwks_uri must be an https URL without credentials or fragment"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_invalid_trusted_issuer_is_a_400_naming_the_fault(broker: Broker, admin: dict[str, str], case: str) -> None:
    body, reason, description = BAD[case]
    r = broker.http.put(PATH, json=body, headers=admin)
    assert (r.status_code, r.json()) == (400, {"error": "invalid_client_metadata", "error_description": description})
    [line] = events(broker, "admin.rejected")
    assert (line["status"], line["reason"], line["method"]) == (400, reason, "PUT")
    assert events(broker, "trust.added") == []
    assert broker.http.get(PATH, headers=admin).json() == {"trusted_issuers": []}


def test_body_that_is_not_json(broker: Broker, admin: dict[str, str]) -> None:
    r = broker.http.put(PATH, content=b"{not json", headers={**admin, "content-type": "application/json"})
    assert (r.status_code, r.json()) == (400, {"error": "invalid_client_metadata",
                                               "error_description": "the body must be valid JSON"})


def test_the_issuer_cap_is_an_answer(broker: Broker, admin: dict[str, str]) -> None:
    store = broker.app.state.trust_store
    for n in range(MAX_ISSUERS):
        broker.call(store.put_issuer, _record(f"https://i{n}.example"))
    r = broker.http.put(PATH, json=k8s_issuer(), headers=admin)
    assert (r.status_code, r.json()) == (400, {"error": "invalid_client_metadata", "error_description":
                                               f"at most {MAX_ISSUERS} trusted issuers; remove one first"})
    # Replacing one that is stored is not adding one.
    r = broker.http.put(PATH, json=k8s_issuer("https://i7.example"), headers=admin)
    assert (r.status_code, r.json()["result"]) == (200, "replaced")


def _record(issuer: str) -> Any:
    from app.oauth.trust import trusted_issuer

    return trusted_issuer(k8s_issuer(issuer))


def test_unreadable_record_is_a_409_and_can_be_removed(broker: Broker, admin: dict[str, str]) -> None:
    from app.store import keyspace

    broker.call(broker.app.state.trust_store.redis.hset, keyspace.REGISTRY_ISSUERS, K8S, b"{not a record")
    r = broker.http.get(PATH, params={"issuer": K8S}, headers=admin)
    assert (r.status_code, r.json()) == (409, {"error": "invalid_client_metadata", "error_description":
                                               "the stored trusted issuer cannot be read; remove it and add it again"})
    assert broker.http.get(PATH, headers=admin).json() == {"trusted_issuers": []}
    r = broker.http.put(PATH, json=k8s_issuer(), headers=admin)
    assert (r.status_code, r.json()["result"]) == (200, "replaced")
    assert broker.http.delete(PATH, params={"issuer": K8S}, headers=admin).status_code == 204


def test_answers_match_the_openapi_document(broker: Broker, admin: dict[str, str]) -> None:
    from tests.test_openapi import _body, documented

    doc = broker.http.get("/openapi.json").json()
    record = _body(doc, PATH, "put", k8s_issuer())
    for method, params, body in [("put", {}, record), ("put", {}, record), ("put", {}, {**record, "rules": []}),
                                 ("put", {}, {"issuer": "http://x.example"}), ("get", {}, None),
                                 ("get", {"issuer": K8S}, None), ("delete", {"issuer": K8S}, None),
                                 ("get", {"issuer": K8S}, None), ("delete", {"issuer": K8S}, None),
                                 ("delete", {}, None)]:
        r = broker.http.request(method.upper(), PATH, params=params, json=body, headers=admin)
        documented(doc, PATH, method, r)
    r = broker.http.get(PATH, headers={"authorization": "Bearer x.y.z"})
    documented(doc, PATH, "get", r)


def test_a_client_with_no_key_of_its_own(broker: Broker) -> None:
    """``"jwks": {"keys": []}``, said explicitly: the client authenticates only through a trusted
    issuer; a private_key_jwt assertion for it is refused like one signed by an unknown key."""
    from tests.expect import assert_invalid_client
    from tests.helpers import RS1, form

    h = admin_headers(broker)
    body = {"client_id": "keyless", "jwks": {"keys": []}, "scopes": ["read"], "audiences": [RS1]}
    r = broker.http.post("/admin/clients", json=body, headers=h)
    assert (r.status_code, r.json()["jwks"]) == (201, {"keys": []})
    r = broker.http.put(PATH, json=k8s_issuer(client_id="keyless"), headers=h)
    assert r.status_code == 201
    broker.app.state.directory.invalidate()
    pretender = TestClient("keyless")
    assert_invalid_client(broker.token(form(pretender.assertion(broker.clock.now))))
    [line] = events(broker, "token.rejected")
    assert (line["client_id"], line["reason"]) == ("keyless", "kid_unknown")
    # Leaving jwks out is still a mistake, not a keyless client.
    r = broker.http.post("/admin/clients", json={**body, "client_id": "forgot", "jwks": None}, headers=h)
    assert (r.status_code, r.json()["error_description"]) == (
        400, "give jwks (a JWK Set with at least one public key) or a jwks_uri")
