"""token-broker-client: private_key_jwt assertions (RFC 7523), cached client-credentials tokens
(RFC 6749 §4.4) and an ``httpx.Auth`` that sends them as Bearer tokens (RFC 6750 §2.1), or as
DPoP-bound tokens with a proof per request (RFC 9449, ``BrokerClient(..., dpop=True)``).

    broker = BrokerClient("https://broker.example", "orders", "orders.jwk", scope="read",
                          resource="https://api.example")   # the key: a JWK or PEM private key file
    httpx.Client(auth=broker.auth()).get("https://api.example/items")

The token logic is written once without I/O (``flow.py``, ``auth.bearer_flow``) and run by a
blocking and an asyncio shell (``shells.py``). The key and assertion code is shared with the
broker and the resource-server library (``token_broker_jose``); ``token-broker-client keygen``
(``keygen.py``) makes a service's key pair on the service's own machine. ``workload.py``: instead of
a key, the token the workload's platform issued (Kubernetes, SPIFFE), for workload identity federation.
"""

import logging

from token_broker_client.auth import BrokerAuth
from token_broker_client.broker import BrokerClient
from token_broker_client.dpop import DPoPKey
from token_broker_client.errors import BrokerError, BrokerUnavailable, InvalidClientError, InvalidScopeError, InvalidTargetError
from token_broker_client.renewal import CachedToken, RenewalPolicy
from token_broker_client.shared_cache import AsyncSharedTokenCache, SharedTokenCache
from token_broker_client.shells import HttpSettings
from token_broker_client.workload import (
    AssertionSource,
    WorkloadApiSvid,
    WorkloadTokenUnavailable,
    jwt_svid_file,
    projected_token,
)
from token_broker_jose.assertion import make_client_assertion
from token_broker_jose.credentials import ClientKey

# A library adds no handler of its own (the application configures logging).
logging.getLogger("token_broker.client").addHandler(logging.NullHandler())

__version__ = "0.1.0"

__all__ = [
    "AssertionSource",
    "AsyncSharedTokenCache",
    "BrokerAuth",
    "BrokerClient",
    "BrokerError",
    "BrokerUnavailable",
    "CachedToken",
    "ClientKey",
    "DPoPKey",
    "HttpSettings",
    "InvalidClientError",
    "InvalidScopeError",
    "InvalidTargetError",
    "RenewalPolicy",
    "SharedTokenCache",
    "WorkloadApiSvid",
    "WorkloadTokenUnavailable",
    "jwt_svid_file",
    "make_client_assertion",
    "projected_token",
]
