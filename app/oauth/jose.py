"""JOSE helpers of the broker: keys and strict parsing, defined once in ``token_broker_jose.jose``.

The client and resource-server libraries use the same module, so the broker and its libraries
parse and convert keys with one definition; server-side modules import them from here.
``import_jwk`` / ``KEY_TYPES`` stay the one JWK → joserfc key conversion.
"""

from token_broker_jose.jose import (
    ALG_SYNONYMS,
    KEY_TYPES,
    Malformed,
    VerificationKey,
    b64decode,
    b64url,
    certificate_thumbprints,
    clean,
    generate_private_key,
    import_jwk,
    numeric_date,
    public_jwk,
    strict_object,
    verification_key,
)

__all__ = [
    "ALG_SYNONYMS",
    "KEY_TYPES",
    "Malformed",
    "VerificationKey",
    "b64decode",
    "b64url",
    "certificate_thumbprints",
    "clean",
    "generate_private_key",
    "import_jwk",
    "numeric_date",
    "public_jwk",
    "strict_object",
    "verification_key",
]
