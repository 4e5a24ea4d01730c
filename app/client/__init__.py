"""Client library: private_key_jwt assertions (RFC 7523), cached client-credentials tokens
(RFC 6749 §4.4) and an ``httpx.Auth`` that sends them as Bearer tokens (RFC 6750 §2.1).

    broker = BrokerClient("https://broker.example", "orders", "orders.jwk", scope="read",
                          resource="https://api.example")
    httpx.Client(auth=broker.auth()).get("https://api.example/items")

The token logic is written once without I/O (``flow.py``, ``auth.bearer_flow``) and run by a
blocking and an asyncio shell (``shells.py``).
"""

import logging

from app.client.assertion import make_client_assertion
from app.client.auth import BrokerAuth
from app.client.broker import BrokerClient
from app.client.credentials import ClientKey
from app.client.errors import BrokerError, BrokerUnavailable, InvalidClientError, InvalidScopeError, InvalidTargetError
from app.client.renewal import CachedToken, RenewalPolicy
from app.client.shared_cache import AsyncSharedTokenCache, SharedTokenCache
from app.client.shells import HttpSettings

# A library adds no handler of its own (the application configures logging).
logging.getLogger("token_broker.client").addHandler(logging.NullHandler())

__all__ = [
    "AsyncSharedTokenCache",
    "BrokerAuth",
    "BrokerClient",
    "BrokerError",
    "BrokerUnavailable",
    "CachedToken",
    "ClientKey",
    "HttpSettings",
    "InvalidClientError",
    "InvalidScopeError",
    "InvalidTargetError",
    "RenewalPolicy",
    "SharedTokenCache",
    "make_client_assertion",
]
