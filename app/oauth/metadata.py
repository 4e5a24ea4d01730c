"""Authorization server metadata: RFC 8414 §2.

The document depends on the settings and on the algorithms of the published signing keys
(``signing_algs``), which change with key rotation; the composition root encodes it once per set
of algorithms and serves the bytes.

The same bytes are served at ``/.well-known/openid-configuration`` too: some client stacks (MSAL,
and libraries configured with an "authority") discover only there. The document claims nothing of
OpenID Connect: no ``openid`` scope, no ID tokens, no userinfo. It deliberately leaves out the
members OIDC Discovery 1.0 §3 requires for an OpenID Provider (``authorization_endpoint``,
``subject_types_supported``, ``id_token_signing_alg_values_supported``): each would announce an
endpoint or ID tokens the broker does not have, and the clients that read this path for the
client credentials grant use ``issuer``, ``token_endpoint`` and ``jwks_uri`` (MSAL Python also
insists on ``authorization_endpoint``, which this broker has none of to announce).
``response_types_supported`` is present (empty: no authorization endpoint) because RFC 8414
requires it.
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
    }


def encode(doc: dict[str, Any]) -> bytes:
    return msgspec.json.encode(doc)
