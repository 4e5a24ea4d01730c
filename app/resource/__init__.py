"""Moved: the resource-server verifier is the distribution ``token-broker-resource`` (import
``token_broker_resource``). ``from app.resource import ResourceVerifier`` (and the library's other
public names) keeps working for one release, with a ``DeprecationWarning`` (``app.moved``).
"""

from app.moved import forwarder

__getattr__ = forwarder("app.resource", "token_broker_resource", "token-broker-resource", (
    "AccessToken", "BearerError", "BearerMiddleware", "BrokerKeys", "Introspection", "ResourceVerifier",
    "VerifierUnavailable", "authenticate", "extract_bearer", "require_bearer",
))
