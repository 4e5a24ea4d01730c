"""Authorization server metadata: RFC 8414 §2.

The document depends on the settings and on the algorithms of the published signing keys
(``signing_algs``), which change with key rotation; the composition root encodes it once per set
of algorithms and serves the bytes.

The same document is served at ``/.well-known/openid-configuration`` too: some client stacks
(MSAL, and libraries configured with an "authority") discover only there. It claims nothing of
OpenID Connect: no ``openid`` scope, no ID tokens, no userinfo, no ``subject_types_supported`` or
``id_token_signing_alg_values_supported`` (each would announce ID tokens the broker does not have).
One member differs there (``openid_configuration``): ``authorization_endpoint``, because MSAL
reads it unconditionally (``KeyError`` without it) and OIDC Discovery 1.0 §3 makes it REQUIRED. It
names ``/authorize``, a real endpoint that refuses every request with ``unsupported_response_type``
(``response_types_supported`` stays empty): announcing it gives a client nothing it can use, and
the RFC 8414 document keeps leaving it out (RFC 8414 §2: omitted when no grant type uses it).
"""

from __future__ import annotations

from typing import Any

import msgspec

from app.config import Settings
from app.oauth.constants import AUTH_METHOD_PRIVATE_KEY_JWT, GRANT_CLIENT_CREDENTIALS


def server_metadata(settings: Settings, *, signing_algs: list[str]) -> dict[str, Any]:
    """The metadata document; ``signing_algs`` are the algorithms of the published signing keys."""
    auth_methods = [AUTH_METHOD_PRIVATE_KEY_JWT]
    assertion_algs = list(settings.assertion_algs)
    return {
        "issuer": settings.issuer,
        "token_endpoint": settings.token_endpoint,
        "jwks_uri": settings.jwks_uri,
        "grant_types_supported": [GRANT_CLIENT_CREDENTIALS],
        "token_endpoint_auth_methods_supported": auth_methods,
        "token_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "response_types_supported": [],
        "access_token_signing_alg_values_supported": signing_algs,
        # RFC 8414 §2: RFC 7009 revocation and RFC 7662 introspection, private_key_jwt as at /token.
        "revocation_endpoint": settings.revocation_endpoint,
        "revocation_endpoint_auth_methods_supported": auth_methods,
        "revocation_endpoint_auth_signing_alg_values_supported": assertion_algs,
        "introspection_endpoint": settings.introspection_endpoint,
        "introspection_endpoint_auth_methods_supported": auth_methods,
        "introspection_endpoint_auth_signing_alg_values_supported": assertion_algs,
        # RFC 9449 §5.1: DPoP proofs are accepted at the token endpoint with these algorithms.
        "dpop_signing_alg_values_supported": list(settings.dpop_algs),
    }


def openid_configuration(doc: dict[str, Any], settings: Settings) -> dict[str, Any]:
    """The document served at ``/.well-known/openid-configuration``: the RFC 8414 one plus the
    ``authorization_endpoint`` that OIDC discovery parsers insist on (see the module docstring)."""
    return {**doc, "authorization_endpoint": settings.authorization_endpoint}


def encode(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)
