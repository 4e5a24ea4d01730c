"""The OpenAPI document lists every public endpoint with the methods the broker really serves."""

from __future__ import annotations

import pytest

PUBLIC = {
    "/token": "post",
    "/revoke": "post",
    "/introspect": "post",
    "/.well-known/oauth-authorization-server": "get",
    "/jwks.json": "get",
}


def test_document_shape(broker):
    r = broker.http.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    doc = r.json()
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"] == [{"url": broker.settings.issuer}]
    assert {path: next(iter(ops)) for path, ops in doc["paths"].items()} == PUBLIC
    token = doc["paths"]["/token"]["post"]
    assert set(token["responses"]) == {"200", "400", "401", "405", "413", "429", "503"}
    schema = token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert schema["required"] == ["grant_type", "client_assertion_type", "client_assertion"]
    assert "/admin/clients" not in doc["paths"]


@pytest.mark.parametrize("path,method", sorted(PUBLIC.items()), ids=sorted(PUBLIC))
def test_every_documented_operation_is_served(broker, c1, path, method):
    """The documented method is routed (never 404/405) on the real app."""
    r = broker.http.request(method.upper(), path, content=b"", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code not in (404, 405), (path, r.status_code)
