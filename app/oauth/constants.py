"""Protocol constants shared by the broker, its tools and the client and resource-server libraries.

Each value is defined once, in ``token_broker_jose.constants`` (the small distribution the broker
and both libraries depend on); server-side modules import them from here.
"""

from token_broker_jose.constants import (
    ACCESS_TOKEN_MAX,
    ADMIN_SCOPE,
    ALG_KEY_TYPES,
    ASSERTION_ALGS,
    ASSERTION_MAX,
    AUTH_METHOD_PRIVATE_KEY_JWT,
    AUTHORIZE_PATH,
    BODY_MAX,
    CLIENT_ASSERTION_TYPE,
    CLIENT_ID_PATTERN,
    FETCHED_DOCUMENT_MAX,
    GRANT_CLIENT_CREDENTIALS,
    INTROSPECT_SCOPE,
    JTI_MAX_LENGTH,
    METADATA_PATH,
    OPENID_CONFIGURATION_PATH,
    SIGNING_ALGS,
    URI_MAX,
)

__all__ = [
    "GRANT_CLIENT_CREDENTIALS",
    "AUTH_METHOD_PRIVATE_KEY_JWT",
    "CLIENT_ASSERTION_TYPE",
    "CLIENT_ID_PATTERN",
    "METADATA_PATH",
    "OPENID_CONFIGURATION_PATH",
    "AUTHORIZE_PATH",
    "ADMIN_SCOPE",
    "INTROSPECT_SCOPE",
    "ALG_KEY_TYPES",
    "ASSERTION_ALGS",
    "SIGNING_ALGS",
    "ASSERTION_MAX",
    "ACCESS_TOKEN_MAX",
    "JTI_MAX_LENGTH",
    "BODY_MAX",
    "FETCHED_DOCUMENT_MAX",
    "URI_MAX",
]
