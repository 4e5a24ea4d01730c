"""Protocol constants shared by the broker, its tools and the resource-server verifier.

Each value is defined here once: the broker (``app.oauth.constants`` re-exports them), the client and
the resource-server libraries all import it from here.
"""

from __future__ import annotations

#: RFC 6749 §4.4: the one grant type the broker issues tokens for.
GRANT_CLIENT_CREDENTIALS = "client_credentials"
#: OpenID Connect Core §9 / RFC 8414 §2: the one client authentication method the broker accepts.
AUTH_METHOD_PRIVATE_KEY_JWT = "private_key_jwt"
#: RFC 7523 §2.2: the ``client_assertion_type`` of private_key_jwt client authentication.
CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

#: RFC 8414 §3: where the authorization server metadata document is served (below the issuer).
METADATA_PATH = "/.well-known/oauth-authorization-server"
#: OpenID Connect Discovery 1.0 §4: where stacks that only discover through OIDC (MSAL among them)
#: look. The broker serves the same RFC 8414 document there (``app.oauth.metadata`` says why).
OPENID_CONFIGURATION_PATH = "/.well-known/openid-configuration"
#: Named only by the openid-configuration document (MSAL reads it unconditionally); every request
#: there is refused with unsupported_response_type (app.oauth.metadata).
AUTHORIZE_PATH = "/authorize"

#: A client_id the broker accepts (``re.fullmatch``): 1-128 of A-Z a-z 0-9 . _ : -, starting with a
#: letter or digit (it names Redis keys, log fields and key files).
CLIENT_ID_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}"

#: The scope an access token needs for the admin API.
ADMIN_SCOPE = "broker:admin"
#: The scope a client needs for RFC 7662 introspection (the one ``broker:`` scope an ordinary
#: registration may hold; the others are for operator-configured admin clients only).
INTROSPECT_SCOPE = "broker:introspect"

#: Every JWS algorithm the broker supports, in its one canonical order, with the key type and
#: curve (None: any) a key must have to be used with it (RFC 7518 §3, RFC 8037 §3.1).
ALG_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    "ES256": ("EC", "P-256"),
    "ES384": ("EC", "P-384"),
    "PS256": ("RSA", None),
    "RS256": ("RSA", None),
    "Ed25519": ("OKP", "Ed25519"),
}
#: Client assertion algorithms the broker can ever accept (BROKER_ASSERTION_ALGS may narrow them).
ASSERTION_ALGS: tuple[str, ...] = tuple(ALG_KEY_TYPES)
#: Algorithms the broker can sign access tokens with (BROKER_SIGNING_ALG picks one).
SIGNING_ALGS: tuple[str, ...] = tuple(ALG_KEY_TYPES)

# -- size caps (characters; every value is ASCII by the time it is measured) ------------------------

#: A client assertion (compact JWS); BROKER_ASSERTION_MAX defaults to it.
ASSERTION_MAX = 8192
#: An access token, at the broker and at a resource server.
ACCESS_TOKEN_MAX = 8192
#: An assertion's ``jti``; BROKER_JTI_MAX_LENGTH defaults to it.
JTI_MAX_LENGTH = 256
#: A request body, at the broker (BROKER_BODY_MAX defaults to it) and at a resource server.
BODY_MAX = 65536
#: A JSON document fetched over the network: a client's ``jwks_uri`` set, the broker's metadata
#: and JWKS read by a resource server.
FETCHED_DOCUMENT_MAX = 65536
#: A URI taken from outside: a ``resource`` parameter, a client's ``jwks_uri``.
URI_MAX = 2048
