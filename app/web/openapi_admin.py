"""The admin API's part of the OpenAPI document: paths under /admin/clients and
/admin/trusted-issuers (``trust_paths``), the Bearer scheme
(scope ``broker:admin``), the client metadata sent and the record returned, the error answers.

By hand, like the public part (``app.web.openapi``): the routes read raw JSON and validate it in
``app.service.client_metadata.build_record``, so there is no model to generate from; the schemas
below say what that function accepts and what ``app.web.routes`` answers.
"""

from __future__ import annotations

from typing import Any

from app.oauth.constants import ADMIN_SCOPE, ALG_KEY_TYPES, ASSERTION_ALGS
from app.oauth.trust import (
    DEFAULT_MAX_LIFETIME,
    DEFAULT_MAX_TOKEN_AGE,
    MAX_CLAIM_CONDITIONS,
    MAX_LIFETIME_CAP,
    MAX_RULES,
    MAX_TOKEN_AGE_CAP,
)

SECURITY_SCHEME = "adminBearer"

_SCOPES = {"oneOf": [{"type": "array", "items": {"type": "string"}},
                     {"type": "string", "description": "space-separated"}]}
_JWK = {
    "type": "object",
    "required": ["kty"],
    "properties": {
        "kty": {"type": "string", "enum": ["EC", "RSA", "OKP"]},
        "kid": {"type": "string", "description": "set by the broker to the key's RFC 7638 thumbprint"},
        "alg": {"type": "string", "enum": list(ALG_KEY_TYPES), "description": "implied by the key type when absent"},
        "use": {"type": "string", "const": "sig"},
        "nbf": {"type": "integer", "description": "unix time before which the key is not used"},
        "exp": {"type": "integer", "description": "unix time from which the key is not used"},
    },
    "description": "A public JWK (RFC 7517); one holding private members (d, p, ...) is refused.",
}
_COMPAT = {
    "type": "object",
    "additionalProperties": False,
    "description": "Per-client compatibility profile for clients that cannot follow the strict rules; "
                   "omitted when empty. Each use is logged (client_auth.compat_used) and counted "
                   "(broker_client_compat_used_total).",
    "properties": {
        "token_endpoint_aud": {"type": "boolean",
                               "description": "also accept aud = the token endpoint URL (not only the issuer)"},
        "assertion_max_lifetime": {"type": "integer", "minimum": 1,
                                   "description": "seconds: this client's assertion lifetime cap instead of "
                                                  "BROKER_ASSERTION_MAX_LIFETIME"},
        "assertion_reuse": {"type": "boolean",
                            "description": "accept the same assertion (jti) again until it expires instead of "
                                           "refusing it as a replay"},
    },
}
#: What a registration may send (RFC 7591 §2 names where they exist).
_METADATA_PROPERTIES: dict[str, Any] = {
    "client_id": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"},
    "jwks": {"type": "object", "required": ["keys"],
             "properties": {"keys": {"type": "array", "items": {"$ref": "#/components/schemas/Jwk"}}},
             "description": "the client's public keys; give jwks or jwks_uri, not both. {\"keys\": []}: no key of "
                            "its own (it authenticates only with its platform's token, through a trusted issuer)"},
    "jwks_uri": {"type": "string", "format": "uri", "description": "https URL the broker fetches the keys from"},
    "token_endpoint_auth_signing_alg": {"type": "string", "enum": list(ALG_KEY_TYPES)},
    "scopes": {**_SCOPES, "description": "every scope the client may ask for"},
    "default_scopes": {**_SCOPES, "description": "granted when a request names none; a subset of scopes"},
    "audiences": {"type": "array", "items": {"type": "string", "format": "uri"},
                  "description": "resource servers (RFC 8707 resource) the client may ask for"},
    "default_audience": {"type": "string", "format": "uri", "description": "default: the first audience"},
    "grant_types": {"type": "array", "items": {"type": "string", "const": "client_credentials"}},
    "token_lifetime": {"type": "integer", "minimum": 60, "maximum": 86400,
                       "description": "seconds; default BROKER_TOKEN_LIFETIME"},
    "legacy_token_endpoint_aud_until": {"type": "integer",
                                        "description": "unix time (at most 366 days ahead) until which aud = the token "
                                                       "endpoint URL is also accepted"},
    "enabled": {"type": "boolean", "default": True},
    "allow_shared_key": {"type": "boolean", "default": False,
                         "description": "share public keys with other registrations that allow it too"},
    "compat": {"$ref": "#/components/schemas/Compat"},
    "dpop_bound_access_tokens": {"type": "boolean", "default": False,
                                 "description": "RFC 9449 §5.2: every token request must carry a DPoP proof"},
}
_IDENTITY_PROPERTIES = {
    "registration_id": {"type": "string", "description": "this registration; new after a delete and register again"},
    "version": {"type": "integer", "description": "bumped by every change"},
    "created_at": {"type": "integer", "description": "unix time"},
    "updated_at": {"type": "integer", "description": "unix time"},
}
_CLIENT = {
    "type": "object",
    "required": ["client_id"],
    "description": "A stored registration. Members at their default are omitted (enabled: true, admin: false, "
                   "allow_shared_key: false, no compat, ...).",
    "properties": {**_METADATA_PROPERTIES, **_IDENTITY_PROPERTIES,
                   "admin": {"type": "boolean", "description": "an admin client the operator configured"}},
}
SCHEMAS: dict[str, Any] = {
    "Jwk": _JWK,
    "Compat": _COMPAT,
    "ClientMetadata": {"type": "object", "required": ["client_id"], "properties": _METADATA_PROPERTIES,
                       "description": "Registration request (RFC 7591 §2 shape); at least one audience "
                                      "(audiences or default_audience) and jwks or jwks_uri are required."},
    "ClientUpdate": {"type": "object", "properties": _METADATA_PROPERTIES,
                     "description": "The members to change; the others keep their values. client_id cannot change."},
    "ClientExport": {"type": "object", "required": ["client_id", "registration_id", "version"],
                     "properties": {**_METADATA_PROPERTIES, **_IDENTITY_PROPERTIES},
                     "description": "A whole record as `broker_admin.py export` writes it."},
    "Client": _CLIENT,
    "ClientList": {"type": "object", "required": ["clients"],
                   "properties": {"clients": {"type": "array", "items": {"$ref": "#/components/schemas/Client"}}}},
    "ImportResult": {"type": "object", "required": ["result", "client"],
                     "properties": {"result": {"type": "string", "enum": ["created", "updated", "unchanged"]},
                                    "client": {"$ref": "#/components/schemas/Client"}}},
    "BearerError": {"type": "object", "description": "RFC 6750 §3; empty when the request had no Bearer token",
                    "properties": {"error": {"type": "string", "enum": ["invalid_token", "insufficient_scope"]},
                                   "error_description": {"type": "string"}}},
}


def security_scheme(admin_audience: str) -> dict[str, Any]:
    return {"type": "http", "scheme": "bearer", "bearerFormat": "JWT",
            "description": f"An RFC 9068 access token from POST /token (private_key_jwt) with scope {ADMIN_SCOPE} "
                           f"for resource {admin_audience}, issued to an admin client."}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _body(name: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(name)}}}


def _answer(description: str, name: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": _ref(name)}}}


_INVALID = {"400": _answer("invalid_client_metadata (the description names the field and what is wrong)", "Error")}
_TOO_LARGE = {"413": _answer("invalid_request: body over BROKER_BODY_MAX", "Error")}
_ERRORS = {
    "401": {"description": "no, an invalid or an expired token (WWW-Authenticate: Bearer)",
            "headers": {"WWW-Authenticate": {"schema": {"type": "string"}}},
            "content": {"application/json": {"schema": _ref("BearerError")}}},
    "403": _answer(f"insufficient_scope: the token lacks {ADMIN_SCOPE}", "BearerError"),
    "503": _answer("temporarily_unavailable: the registry cannot answer (Retry-After)", "Error"),
}
_NOT_FOUND = {"404": _answer("not_found: no such client (or key)", "Error")}
_CONFLICT = {"409": _answer("invalid_client_metadata: the client_id is taken, or the client changed meanwhile "
                            "(read it and retry)", "Error")}


def _op(summary: str, responses: dict[str, Any], body: str | None = None, **extra: Any) -> dict[str, Any]:
    op: dict[str, Any] = {"summary": summary, "tags": ["admin"], "security": [{SECURITY_SCHEME: [ADMIN_SCOPE]}]}
    if body:
        op["requestBody"] = _body(body)
        responses = {**responses, **_INVALID, **_TOO_LARGE}
    return {**op, **extra, "responses": {**responses, **_ERRORS}}


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}


def admin_paths() -> dict[str, Any]:
    client_id = [_path_param("client_id")]
    force = {"name": "force", "in": "query", "required": False,
             "schema": {"type": "string", "enum": ["true", "false"], "default": "false"},
             "description": "replace a newer record, or another registration of the client_id"}
    return {
        "/admin/clients": {
            "post": _op("Register a client", {"201": _answer("registered", "Client"), **_CONFLICT},
                        "ClientMetadata", operationId="registerClient"),
            "get": _op("List every client", {"200": _answer("every readable record", "ClientList")},
                       operationId="listClients"),
        },
        "/admin/clients/{client_id}": {
            "parameters": client_id,
            "get": _op("Show a client", {"200": _answer("the record", "Client"), **_NOT_FOUND}, operationId="getClient"),
            "patch": _op("Change a client's metadata", {"200": _answer("the new record", "Client"), **_NOT_FOUND,
                                                        **_CONFLICT}, "ClientUpdate", operationId="updateClient"),
            "delete": _op("Delete a client (an admin client is refused: 400)",
                          {"204": {"description": "deleted"}, **_NOT_FOUND, **_INVALID}, operationId="deleteClient"),
        },
        "/admin/clients/{client_id}/keys": {
            "parameters": client_id,
            "post": _op("Add a public key", {"201": _answer("the new record", "Client"), **_NOT_FOUND, **_CONFLICT},
                        "Jwk", operationId="addClientKey"),
        },
        "/admin/clients/{client_id}/keys/{kid}": {
            "parameters": [*client_id, _path_param("kid")],
            "delete": _op("Remove a key (a client keeps at least one)", {"200": _answer("the new record", "Client"),
                                                                        **_NOT_FOUND, **_CONFLICT, **_INVALID},
                          operationId="removeClientKey"),
        },
        "/admin/clients/{client_id}/record": {
            "parameters": client_id,
            "put": _op("Restore a whole record as exported (one compare-and-set)",
                       {"201": _answer("created", "ImportResult"), "200": _answer("updated or unchanged", "ImportResult"),
                        **_CONFLICT}, "ClientExport", operationId="importClient", parameters=[force]),
        },
    }


# -- trusted issuers (workload identity federation: app.oauth.trust, app.service.trust_admin) ------

_TEXT = {"type": "string", "minLength": 1, "maxLength": 512}
_RULE = {
    "type": "object", "required": ["client_id"], "additionalProperties": False,
    "description": "Maps a token to a registered (non-admin) client when every condition it sets holds; it sets at "
                   "least one.",
    "properties": {
        "client_id": {"type": "string"},
        "sub": {**_TEXT, "description": "the token's sub, exactly"},
        "sub_pattern": {**_TEXT, "description": "the token's sub: * one or more characters other than / and :, ** "
                                                "one or more of any character"},
        "claims": {"type": "object", "maxProperties": MAX_CLAIM_CONDITIONS, "additionalProperties": _TEXT,
                   "description": "claim path (segments separated by '.', the longest member name at each level: "
                                  "kubernetes.io.namespace) -> exact string value"},
    },
}
_ISSUER = {
    "type": "object", "required": ["issuer"], "additionalProperties": False,
    "description": "A trusted issuer. Keys: jwks, jwks_uri, or neither (OIDC discovery below the issuer). Members at "
                   "their default are omitted from answers.",
    "properties": {
        "issuer": {"type": "string", "description": "the tokens' iss (an https URL), or spiffe://<trust domain>"},
        "jwks": {"type": "object", "required": ["keys"], "description": "a static JWKS (1-20 public keys)"},
        "jwks_uri": {"type": "string", "format": "uri"},
        "audience": {**_TEXT, "description": "the aud a token must carry (default: the broker's issuer)"},
        "allow_other_audiences": {"type": "boolean", "default": False,
                                  "description": "accept an aud array holding other members next to the audience"},
        "algs": {"type": "array", "minItems": 1, "items": {"enum": list(ASSERTION_ALGS)}},
        "max_token_age": {"type": "integer", "minimum": 1, "maximum": MAX_TOKEN_AGE_CAP,
                          "default": DEFAULT_MAX_TOKEN_AGE, "description": "seconds: the oldest iat accepted"},
        "max_lifetime": {"type": "integer", "minimum": 1, "maximum": MAX_LIFETIME_CAP,
                         "default": DEFAULT_MAX_LIFETIME, "description": "seconds: the longest exp - iat accepted"},
        "single_use": {"type": "boolean", "default": False,
                       "description": "a token must carry a jti and is accepted once (otherwise: reuse until exp)"},
        "rules": {"type": "array", "maxItems": MAX_RULES, "items": {"$ref": "#/components/schemas/MappingRule"}},
    },
}
SCHEMAS |= {
    "MappingRule": _RULE,
    "TrustedIssuer": _ISSUER,
    "TrustedIssuerList": {"type": "object", "required": ["trusted_issuers"], "properties": {
        "trusted_issuers": {"type": "array", "items": {"$ref": "#/components/schemas/TrustedIssuer"}}}},
    "TrustedIssuerListOrOne": {"oneOf": [{"$ref": "#/components/schemas/TrustedIssuerList"},
                                         {"$ref": "#/components/schemas/TrustedIssuer"}]},
    "TrustedIssuerPut": {"type": "object", "required": ["result", "trusted_issuer"], "properties": {
        "result": {"type": "string", "enum": ["created", "replaced", "unchanged"]},
        "trusted_issuer": {"$ref": "#/components/schemas/TrustedIssuer"}}},
}


def trust_paths() -> dict[str, Any]:
    """One path: an issuer identifier is a URL, so it is a query parameter, never a path segment."""
    def issuer(required: bool) -> dict[str, Any]:
        return {"name": "issuer", "in": "query", "required": required, "schema": {"type": "string"},
                "description": "the trusted issuer's identifier, URL-encoded" + ("" if required else
                                                                                 ": show that one instead of listing")}

    unknown = {"404": _answer("not_found: no such trusted issuer", "Error"),
               "409": _answer("invalid_client_metadata: the stored record cannot be read", "Error")}
    return {"/admin/trusted-issuers": {
        "get": _op("List the trusted issuers, or show one (?issuer=)",
                   {"200": _answer("every readable record (TrustedIssuerList), or the one named",
                                   "TrustedIssuerListOrOne"), **unknown, **_INVALID},
                   operationId="listOrShowTrustedIssuers", parameters=[issuer(False)]),
        "put": _op("Create or replace the trusted issuer the body names (its mapping rules must name registered, "
                   "non-admin clients)", {"201": _answer("created", "TrustedIssuerPut"),
                                          "200": _answer("replaced or unchanged", "TrustedIssuerPut")},
                   "TrustedIssuer", operationId="putTrustedIssuer"),
        "delete": _op("Remove a trusted issuer", {"204": {"description": "removed"}, **unknown, **_INVALID},
                      operationId="removeTrustedIssuer", parameters=[issuer(True)]),
    }}
