"""token-broker-resource: verify broker-issued RFC 9068 access tokens, answer as RFC 6750 says;
DPoP-bound tokens with their proofs too (RFC 9449 §7.1) when given a ``DPoPPolicy``.

    verifier = ResourceVerifier("https://broker.example", audience="https://api.example",
                                dpop=DPoPPolicy(external_url="https://api.example"))  # optional
    app = BearerMiddleware(app, verifier, scopes=["read"])          # any ASGI app
    @get("/x", middleware=[require_bearer(verifier, scopes=["read"])])  # a Litestar route
"""

import logging

from token_broker_resource.asgi import BearerMiddleware, authenticate, require_bearer
from token_broker_resource.bearer import BearerError, extract_bearer
from token_broker_resource.dpop import DPoPPolicy, MemoryReplayCache, RedisReplayCache, ReplayCache, ResourceNonces
from token_broker_resource.introspection import Introspection
from token_broker_resource.keys import BrokerKeys, VerifierUnavailable
from token_broker_resource.verifier import AccessToken, ResourceVerifier

# A library adds no handler of its own (the application configures logging).
logging.getLogger("token_broker.resource").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AccessToken",
    "BearerError",
    "BearerMiddleware",
    "BrokerKeys",
    "DPoPPolicy",
    "Introspection",
    "MemoryReplayCache",
    "RedisReplayCache",
    "ReplayCache",
    "ResourceNonces",
    "ResourceVerifier",
    "VerifierUnavailable",
    "authenticate",
    "extract_bearer",
    "require_bearer",
]
