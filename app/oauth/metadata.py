"""Authorization server metadata: RFC 8414 §2.

The document is built once at start (it depends only on settings) and served as bytes.
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.config import Settings


def server_metadata(settings: Settings, *, signing_algs: list[str]) -> dict[str, Any]:
    issuer = settings.issuer
    return {
        "issuer": issuer,
        "token_endpoint": settings.token_endpoint,
        "jwks_uri": settings.jwks_uri,
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": list(settings.assertion_algs),
        "response_types_supported": [],
        "access_token_signing_alg_values_supported": signing_algs,
        # RFC 8414 §2: RFC 7009 revocation and RFC 7662 introspection, private_key_jwt as at /token.
        "revocation_endpoint": settings.revocation_endpoint,
        "revocation_endpoint_auth_methods_supported": ["private_key_jwt"],
        "revocation_endpoint_auth_signing_alg_values_supported": list(settings.assertion_algs),
        "introspection_endpoint": settings.introspection_endpoint,
        "introspection_endpoint_auth_methods_supported": ["private_key_jwt"],
        "introspection_endpoint_auth_signing_alg_values_supported": list(settings.assertion_algs),
    }


def encode(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)
