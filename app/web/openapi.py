"""OpenAPI 3.1 description of the public endpoints and the admin API (``app.web.openapi_admin``),
built once at start from the settings.

Written by hand rather than generated: the token endpoint is a plain ASGI handler (no framework
models to introspect), and the document must say what the RFCs say (form-encoded requests,
RFC 6749 §5.2 error bodies, no-store), which no generator knows.
"""

from __future__ import annotations

from typing import Any

from app.config import Settings
from app.oauth.constants import CLIENT_ASSERTION_TYPE, METADATA_PATH
from app.oauth.federation import SPIFFE_ASSERTION_TYPE
from app.web import openapi_admin

_ERROR = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string", "description": "RFC 6749 §5.2 error code"},
        "error_description": {"type": "string"},
    },
}
_CLIENT_AUTH = {
    "client_assertion_type": {"type": "string", "enum": [CLIENT_ASSERTION_TYPE, SPIFFE_ASSERTION_TYPE],
                              "description": "jwt-spiffe (draft-ietf-oauth-spiffe-client-auth) for a SPIFFE JWT-SVID"},
    "client_assertion": {"type": "string", "description": "JWT signed with the client's private key (RFC 7523 §3; aud = "
                                                          "issuer), or a workload token of a trusted issuer"},
    "client_id": {"type": "string", "description": "optional; must name the assertion's client (for a workload token: "
                                                   "the mapped client, or its SPIFFE ID)"},
}


def _form(properties: dict[str, Any], required: list[str]) -> dict[str, Any]:
    return {"required": True, "content": {"application/x-www-form-urlencoded": {
        "schema": {"type": "object", "properties": properties, "required": required}}}}


def _json(description: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    text = {400: "invalid_request, invalid_scope, invalid_target, unsupported_grant_type, unauthorized_client",
            401: "invalid_client (one identical body for every cause)", 403: "access_denied",
            405: "method not allowed (Allow: POST)", 413: "body over the size limit",
            429: "slow_down: too many failed authentications (Retry-After)",
            503: "temporarily_unavailable: the replay store cannot answer (Retry-After)"}
    return {str(c): _json(text[c], {"$ref": "#/components/schemas/Error"}) for c in codes}


_TOKEN_RESPONSE = {
    "type": "object",
    "required": ["access_token", "token_type", "expires_in", "scope"],
    "properties": {
        "access_token": {"type": "string", "description": "RFC 9068 JWT (typ at+jwt)"},
        "token_type": {"type": "string", "const": "Bearer"},
        "expires_in": {"type": "integer"},
        "scope": {"type": "string"},
    },
}
#: The request body of RFC 7009 revocation and RFC 7662 introspection.
_TOKEN_OP_FORM = _form({"token": {"type": "string"}, "token_type_hint": {"type": "string"}, **_CLIENT_AUTH},
                       ["token", "client_assertion_type", "client_assertion"])


def openapi_document(settings: Settings) -> dict[str, Any]:
    plain = {"type": "object"}
    return {
        "openapi": "3.1.0",
        "info": {"title": "token-broker", "version": "0.1.0",
                 "description": "OAuth 2.0 client credentials with private_key_jwt (RFC 6749 §4.4, RFC 7523)."},
        "servers": [{"url": settings.issuer}],
        "paths": {
            "/token": {"post": {
                "summary": "Access token request (RFC 6749 §4.4.2)",
                "requestBody": _form({
                    "grant_type": {"type": "string", "const": "client_credentials"},
                    **_CLIENT_AUTH,
                    "scope": {"type": "string"},
                    "resource": {"type": "string", "format": "uri", "description": "RFC 8707"},
                }, ["grant_type", "client_assertion_type", "client_assertion"]),
                "responses": {"200": _json("RFC 6749 §5.1 (Cache-Control: no-store)", _TOKEN_RESPONSE),
                              **_errors(400, 401, 405, 413, 429, 503)},
            }},
            "/revoke": {"post": {
                "summary": "Token revocation (RFC 7009), private_key_jwt",
                "requestBody": _TOKEN_OP_FORM,
                "responses": {"200": {"description": "revoked, or not this client's token (RFC 7009 §2.2)"},
                              **_errors(400, 401, 413, 429, 503)},
            }},
            "/introspect": {"post": {
                "summary": "Token introspection (RFC 7662), private_key_jwt, scope broker:introspect",
                "requestBody": _TOKEN_OP_FORM,
                "responses": {"200": _json("RFC 7662 §2.2", {"type": "object", "required": ["active"],
                                                            "properties": {"active": {"type": "boolean"}}}),
                              **_errors(400, 401, 403, 413, 429, 503)},
            }},
            METADATA_PATH: {"get": {
                "summary": "Authorization server metadata (RFC 8414)",
                "responses": {"200": _json("metadata", plain)}}},
            "/jwks.json": {"get": {
                "summary": "The broker's public signing keys (RFC 7517)",
                "responses": {"200": {"description": "JWK Set",
                                      "content": {"application/jwk-set+json": {"schema": plain}}}}}},
            **openapi_admin.admin_paths(),
            **openapi_admin.trust_paths(),
        },
        "components": {
            "schemas": {"Error": _ERROR, **openapi_admin.SCHEMAS},
            "securitySchemes": {openapi_admin.SECURITY_SCHEME: openapi_admin.security_scheme(settings.admin_audience)},
        },
    }
