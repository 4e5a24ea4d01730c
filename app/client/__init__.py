"""The broker's operator tooling (``admin*.py``, ``why.py``, ``reasons.py``: ``scripts/broker_admin.py``).

The client library moved to its own distribution, ``token-broker-client`` (import
``token_broker_client``). ``from app.client import BrokerClient`` (and the library's other public
names) keeps working for one release, with a ``DeprecationWarning`` (``app.moved``).
"""

from app.moved import forwarder

__getattr__ = forwarder("app.client", "token_broker_client", "token-broker-client", (
    "AsyncSharedTokenCache", "BrokerAuth", "BrokerClient", "BrokerError", "BrokerUnavailable", "CachedToken",
    "ClientKey", "HttpSettings", "InvalidClientError", "InvalidScopeError", "InvalidTargetError", "RenewalPolicy",
    "SharedTokenCache", "make_client_assertion",
))
