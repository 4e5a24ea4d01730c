"""Discovery: the RFC 8414 metadata document, also at the OpenID Connect discovery path for the
client stacks that only look there, and claiming nothing of OpenID Connect."""

from __future__ import annotations

import pytest

RFC8414 = "/.well-known/oauth-authorization-server"
OIDC = "/.well-known/openid-configuration"


def test_openid_configuration_is_the_same_document_plus_authorization_endpoint(broker) -> None:
    rfc, oidc = broker.http.get(RFC8414), broker.http.get(OIDC)
    assert (rfc.status_code, oidc.status_code) == (200, 200)
    # MSAL reads authorization_endpoint unconditionally: the openid-configuration form names the
    # refusing /authorize; the RFC 8414 document leaves it out (no grant type uses it).
    assert oidc.json() == {**rfc.json(), "authorization_endpoint": broker.settings.issuer + "/authorize"}
    assert "authorization_endpoint" not in rfc.json()
    for name in ("content-type", "cache-control"):
        assert oidc.headers[name] == rfc.headers[name]
    assert oidc.json()["issuer"] == broker.settings.issuer


def test_metadata_claims_nothing_of_openid_connect(broker) -> None:
    doc = broker.http.get(OIDC).json()
    assert doc["response_types_supported"] == []  # RFC 8414 requires the member: no authorization endpoint
    assert doc["grant_types_supported"] == ["client_credentials"]
    oidc_only = {"userinfo_endpoint", "subject_types_supported", "claims_supported",
                 "id_token_signing_alg_values_supported", "end_session_endpoint", "registration_endpoint"}
    assert not oidc_only & set(doc)
    assert "openid" not in broker.http.get(OIDC).text.replace(OIDC, "")


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("query", ["", "?response_type=code&client_id=c1&redirect_uri=https%3A%2F%2Fevil.example%2Fcb"])
def test_authorize_refuses_every_request_and_never_redirects(broker, method: str, query: str) -> None:
    response = broker.http.request(method, "/authorize" + query)
    assert (response.status_code, response.json()) == (400, {
        "error": "unsupported_response_type",
        "error_description": "This broker has no authorization endpoint to use: it issues tokens only with the "
                             "client_credentials grant at its token endpoint."})
    assert "location" not in response.headers
    assert response.headers["cache-control"] == "no-store"


@pytest.mark.parametrize("path", [OIDC + "/", "/.well-known/openid-configuration.json", "/.well-known/OPENID-configuration",
                                  "/openid-configuration"])
def test_only_the_canonical_path(broker, path: str) -> None:
    response = broker.http.get(path)
    assert (response.status_code, response.json()) == (404, {"error": "not_found"})
