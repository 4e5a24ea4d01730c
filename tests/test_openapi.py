"""The OpenAPI document: every public endpoint and the admin API with the methods the broker really
serves, a structurally valid OpenAPI 3.1 document (every operation answers, every $ref resolves),
and the admin API's real answers match the schemas it documents."""

from __future__ import annotations

import re
from typing import Any

import msgspec
import pytest
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from app.oauth.clients import ClientRecord
from tests.conftest import Broker
from tests.helpers import RS1, new_key
from tests.test_admin_api import admin_headers, meta

PUBLIC = {
    "/token": "post",
    "/revoke": "post",
    "/introspect": "post",
    "/.well-known/oauth-authorization-server": "get",
    "/jwks.json": "get",
}
ADMIN = {
    ("/admin/clients", "post"), ("/admin/clients", "get"),
    ("/admin/clients/{client_id}", "get"), ("/admin/clients/{client_id}", "patch"), ("/admin/clients/{client_id}", "delete"),
    ("/admin/clients/{client_id}/keys", "post"), ("/admin/clients/{client_id}/keys/{kid}", "delete"),
    ("/admin/clients/{client_id}/record", "put"),
    ("/admin/trusted-issuers", "get"), ("/admin/trusted-issuers", "put"), ("/admin/trusted-issuers", "delete"),
}
METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}


def operations(doc: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(path, method): op for path, item in doc["paths"].items() for method, op in item.items() if method in METHODS}


@pytest.fixture
def doc(broker) -> dict[str, Any]:
    r = broker.http.get("/openapi.json")
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    return r.json()


def test_document_shape(broker, doc):
    assert doc["openapi"] == "3.1.0"
    assert doc["servers"] == [{"url": broker.settings.issuer}]
    assert set(operations(doc)) == {*PUBLIC.items(), *ADMIN}
    token = doc["paths"]["/token"]["post"]
    assert set(token["responses"]) == {"200", "400", "401", "405", "413", "429", "503"}
    schema = token["requestBody"]["content"]["application/x-www-form-urlencoded"]["schema"]
    assert schema["required"] == ["grant_type", "client_assertion_type", "client_assertion"]
    assert "security" not in token


def test_admin_operations_need_the_admin_bearer(broker, doc):
    scheme = doc["components"]["securitySchemes"]["adminBearer"]
    assert (scheme["type"], scheme["scheme"], scheme["bearerFormat"]) == ("http", "bearer", "JWT")
    assert f"for resource {broker.settings.admin_audience}" in scheme["description"]
    for key in ADMIN:
        op = operations(doc)[key]
        assert op["security"] == [{"adminBearer": ["broker:admin"]}], key
        assert {"401", "403", "503"} <= set(op["responses"]), key


def test_compat_profile_is_documented(doc):
    schemas = doc["components"]["schemas"]
    for name in ("ClientMetadata", "ClientUpdate", "ClientExport", "Client"):
        assert schemas[name]["properties"]["compat"] == {"$ref": "#/components/schemas/Compat"}
    compat = validator(doc, "Compat")
    assert compat.is_valid({"token_endpoint_aud": True, "assertion_max_lifetime": 3600, "assertion_reuse": True})
    assert compat.is_valid({})
    assert not compat.is_valid({"assertion_max_lifetime": "3600"})
    assert not compat.is_valid({"reuse": True})


def test_every_stored_record_field_is_documented(doc):
    documented = set(doc["components"]["schemas"]["Client"]["properties"])
    assert {f.encode_name for f in msgspec.structs.fields(ClientRecord)} <= documented


@pytest.mark.parametrize("path,method", sorted(PUBLIC.items()), ids=sorted(PUBLIC))
def test_every_documented_public_operation_is_served(broker, c1, path, method):
    """The documented method is routed (never 404/405) on the real app."""
    r = broker.http.request(method.upper(), path, content=b"", headers={"content-type": "application/x-www-form-urlencoded"})
    assert r.status_code not in (404, 405), (path, r.status_code)


@pytest.mark.parametrize("path,method", sorted(ADMIN), ids=[f"{m} {p}" for p, m in sorted(ADMIN)])
def test_every_documented_admin_operation_is_served(broker, path, method):
    """Routed, and without a token the bare RFC 6750 §3.1 challenge the document lists as 401."""
    r = broker.http.request(method.upper(), path.format(client_id="svc", kid="k1"), json={})
    assert (r.status_code, r.json(), r.headers["www-authenticate"]) == (401, {}, 'Bearer realm="token-broker"')


# -- structure: a minimal OpenAPI 3.1 schema, then what a schema cannot say ------------------------

_RESPONSES = {"type": "object", "minProperties": 1, "propertyNames": {"pattern": "^([1-5][0-9X]{2}|default)$"},
              "additionalProperties": {"$ref": "#/$defs/response"}}
_PARAMETER = {"type": "object", "required": ["name", "in", "schema"],
              "properties": {"in": {"enum": ["query", "header", "path", "cookie"]}},
              "if": {"properties": {"in": {"const": "path"}}}, "then": {"required": ["required"],
                                                                     "properties": {"required": {"const": True}}}}
OPENAPI_31 = {
    "type": "object",
    "required": ["openapi", "info", "paths"],
    "properties": {
        "openapi": {"type": "string", "pattern": r"^3\.1\.\d+$"},
        "info": {"type": "object", "required": ["title", "version"]},
        "servers": {"type": "array", "items": {"type": "object", "required": ["url"]}},
        "paths": {"type": "object", "propertyNames": {"pattern": "^/"}, "additionalProperties": {"$ref": "#/$defs/pathItem"}},
        "components": {"type": "object", "properties": {
            "schemas": {"type": "object", "additionalProperties": {"type": "object"}},
            "securitySchemes": {"type": "object", "additionalProperties": {
                "type": "object", "required": ["type"],
                "properties": {"type": {"enum": ["apiKey", "http", "mutualTLS", "oauth2", "openIdConnect"]}},
                "if": {"properties": {"type": {"const": "http"}}}, "then": {"required": ["scheme"]}}},
        }},
    },
    "$defs": {
        "pathItem": {"type": "object",
                     "propertyNames": {"enum": ["summary", "description", "parameters", "servers", *sorted(METHODS)]},
                     "properties": {"parameters": {"type": "array", "items": _PARAMETER}},
                     "patternProperties": {f"^({'|'.join(sorted(METHODS))})$": {"$ref": "#/$defs/operation"}}},
        "operation": {"type": "object", "required": ["summary", "responses"], "properties": {
            "responses": _RESPONSES,
            "parameters": {"type": "array", "items": _PARAMETER},
            "requestBody": {"type": "object", "required": ["content"], "properties": {"content": {"$ref": "#/$defs/content"}}},
            "security": {"type": "array", "items": {"type": "object",
                                                    "additionalProperties": {"type": "array", "items": {"type": "string"}}}},
            "operationId": {"type": "string"},
            "tags": {"type": "array", "items": {"type": "string"}},
        }},
        "response": {"type": "object", "required": ["description"],
                     "properties": {"content": {"$ref": "#/$defs/content"}, "headers": {"type": "object"}}},
        "content": {"type": "object", "minProperties": 1,
                    "additionalProperties": {"type": "object", "required": ["schema"]}},
    },
}


def refs(node: Any) -> list[str]:
    if isinstance(node, dict):
        return ([node["$ref"]] if "$ref" in node else []) + [r for v in node.values() for r in refs(v)]
    if isinstance(node, list):
        return [r for v in node for r in refs(v)]
    return []


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return node


def test_document_is_structurally_valid_openapi_3_1(doc):
    Draft202012Validator.check_schema(OPENAPI_31)
    errors = sorted(Draft202012Validator(OPENAPI_31).iter_errors(doc), key=str)
    assert [f"{list(e.absolute_path)}: {e.message}" for e in errors] == []


def test_every_ref_resolves_and_every_schema_is_json_schema(doc):
    found = refs(doc)
    assert len(found) > 50
    for ref in found:
        assert isinstance(resolve(doc, ref), dict), ref
    for schema in doc["components"]["schemas"].values():
        Draft202012Validator.check_schema(schema)


def test_operations_are_complete(doc):
    ids = [op["operationId"] for op in operations(doc).values() if "operationId" in op]
    assert len(ids) == len(set(ids)) == len(ADMIN)
    schemes = set(doc["components"]["securitySchemes"])
    for (path, method), op in operations(doc).items():
        declared = {p["name"] for p in doc["paths"][path].get("parameters", []) + op.get("parameters", []) if p["in"] == "path"}
        assert declared == set(re.findall(r"{(\w+)}", path)), (path, method)
        assert all(set(s) <= schemes for s in op.get("security", [])), (path, method)
        assert any(code.startswith("2") for code in op["responses"]), (path, method)


# -- the admin API answers what the document says ---------------------------------------------------


def validator(doc: dict[str, Any], name: str) -> Draft202012Validator:
    registry = Registry().with_resource("urn:openapi", Resource(contents=doc, specification=DRAFT202012))
    return Draft202012Validator({"$ref": f"urn:openapi#/components/schemas/{name}"}, registry=registry)


def documented(doc: dict[str, Any], path: str, method: str, response: Any) -> None:
    """The answer's status is listed for the operation, and its JSON body matches that schema."""
    answers = doc["paths"][path][method]["responses"]
    assert str(response.status_code) in answers, (path, method, response.status_code, response.text)
    content = answers[str(response.status_code)].get("content")
    if content is None:
        assert response.content == b""
        return
    schema = content["application/json"]["schema"]
    registry = Registry().with_resource("urn:openapi", Resource(contents=doc, specification=DRAFT202012))
    errors = list(Draft202012Validator({"$ref": "urn:openapi#" + schema["$ref"][1:]}, registry=registry)
                  .iter_errors(response.json()))
    assert errors == [], (path, method, response.status_code, [e.message for e in errors])


def _body(doc: dict[str, Any], path: str, method: str, body: Any) -> Any:
    """A request body, checked against the schema the document gives for it."""
    ref = doc["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    assert validator(doc, ref.rsplit("/", 1)[1]).is_valid(body), (path, method, body)
    return body


def test_admin_answers_match_the_document(broker: Broker, doc):
    h = admin_headers(broker)
    http = broker.http
    one = "/admin/clients/{client_id}"

    def call(method: str, path: str, body: Any = None, **params: str) -> Any:
        url = path.format(client_id="svc", kid=params.pop("kid", "")) + "".join(f"?{k}={v}" for k, v in params.items())
        kwargs = {"json": _body(doc, path, method, body)} if body is not None else {}
        r = http.request(method.upper(), url, headers=h, **kwargs)
        documented(doc, path, method, r)
        return r

    assert call("post", "/admin/clients", meta("svc", token_lifetime=600)).status_code == 201
    assert call("post", "/admin/clients", meta("svc")).status_code == 409
    assert call("post", "/admin/clients", {"client_id": "bad", "scopes": ["read"], "audiences": [RS1]}).status_code == 400
    assert call("get", "/admin/clients").status_code == 200
    exported = call("get", one).json()
    assert call("patch", one, {"scopes": "read write", "default_scopes": ["read"]}).status_code == 200
    added = call("post", one + "/keys", new_key("ES256").as_dict(private=False) | {"alg": "ES256"})
    assert added.status_code == 201
    kid = added.json()["jwks"]["keys"][-1]["kid"]
    assert call("delete", one + "/keys/{kid}", kid=kid).status_code == 200
    assert call("delete", one + "/keys/{kid}", kid="nope").status_code == 404
    assert call("put", one + "/record", exported, force="true").status_code == 200
    assert call("delete", one).status_code == 204
    assert call("get", one).status_code == 404
    assert call("put", one + "/record", exported).status_code == 201
    r = http.get("/admin/clients", headers={"authorization": "Bearer x.y.z"})
    documented(doc, "/admin/clients", "get", r)
    assert r.status_code == 401
