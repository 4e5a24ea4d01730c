"""Client-credentials token requests with private_key_jwt: RFC 6749 §4.4, RFC 7523 §2.2, RFC 8414.

``BrokerClient`` discovers the token endpoint from the broker's metadata, asks for tokens with a
fresh assertion each time, and keeps them in memory per (scope, resource) until the jittered
renewal point (``renewal.py``). Concurrent callers that need the same token wait on one lock, so
a cold start makes one token request however many callers there are. An optional
``SharedTokenCache`` (``get_token``) or ``AsyncSharedTokenCache`` (``aget_token``) extends that to
the replicas of one client service.

The logic lives once in ``TokenFlow`` (``flow.py``); the methods here only pick the shell that
runs it: blocking (``SyncShell``) or asyncio (``AsyncShell``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any

from token_broker_client.auth import BrokerAuth
from token_broker_client.dpop import DPoPKey, DPoPSession
from token_broker_client.flow import TokenFlow
from token_broker_client.renewal import RenewalPolicy
from token_broker_client.shared_cache import AsyncSharedTokenCache, SharedTokenCache
from token_broker_client.shells import AsyncShell, HttpSettings, SyncShell
from token_broker_client.workload import AssertionSource
from token_broker_jose.assertion import MAX_LIFETIME
from token_broker_jose.credentials import ClientKey

Scope = str | Iterable[str] | None


class BrokerClient:
    """Obtain and cache access tokens for one client of the broker.

    ``key`` is a private JWK (dict), a path to a JWK or PEM file (PKCS#8, SEC1, PKCS#1), a joserfc or
    ``cryptography`` private key, or a ``ClientKey``; or, for workload identity federation, an
    ``AssertionSource`` (``token_broker_client.workload``: the platform's token sent as the assertion);
    ``alg``/``kid`` override the JWK's. ``scope``/``resource`` are the defaults for
    ``get_token()`` and ``auth()``; without them the broker applies the client's registered
    defaults. ``token_endpoint`` skips discovery. ``clock`` (a ``() -> float``, seconds since the
    epoch) is injectable for tests.

    ``dpop`` turns on DPoP (RFC 9449): ``True`` generates an ES256 key in memory, a ``DPoPKey``
    (or what ``DPoPKey`` loads: a JWK or PEM file, a key object) is used as given. Token requests then
    carry a proof and expect ``token_type: DPoP`` (a Bearer answer is refused, ``dpop_not_supported``),
    and ``auth()`` sends ``Authorization: DPoP`` with a proof per request.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        key: Any,
        *,
        alg: str | None = None,
        kid: str | None = None,
        scope: Scope = None,
        resource: str | None = None,
        token_endpoint: str | None = None,
        renewal: RenewalPolicy | None = None,
        http: HttpSettings | None = None,
        shared_cache: SharedTokenCache | AsyncSharedTokenCache | None = None,
        clock: Callable[[], float] = time.time,
        assertion_lifetime: int = MAX_LIFETIME,
        dpop: DPoPKey | bool | Any = False,
    ) -> None:
        client_key = key if isinstance(key, (ClientKey, AssertionSource)) else ClientKey(key, alg=alg, kid=kid)
        self.dpop = _dpop_session(dpop, clock)
        self._core = TokenFlow(issuer, client_id, client_key, scope=scope, resource=resource,
                               token_endpoint=token_endpoint, renewal=renewal, clock=clock,
                               assertion_lifetime=assertion_lifetime, dpop=self.dpop)
        http = http or HttpSettings()
        # A cache serves the shell of its kind; the other shell asks the broker directly.
        self._sync = SyncShell(self._core, http, shared_cache if isinstance(shared_cache, SharedTokenCache) else None)
        self._async = AsyncShell(self._core, http, shared_cache if isinstance(shared_cache, AsyncSharedTokenCache) else None)

    @property
    def issuer(self) -> str:
        return self._core.issuer

    @property
    def client_id(self) -> str:
        return self._core.client_id

    @property
    def dpop_key(self) -> DPoPKey | None:
        """The DPoP key (None with DPoP off); ``dpop_key.jkt`` is the tokens' ``cnf.jkt``."""
        return None if self.dpop is None else self.dpop.key

    def __repr__(self) -> str:
        dpop = "" if self.dpop is None else f", dpop={self.dpop.key!r}"
        return f"BrokerClient(issuer={self.issuer!r}, client_id={self.client_id!r}, key={self._core.key!r}{dpop})"

    def get_token(self, scope: Scope = None, resource: str | None = None) -> str:
        """A valid access token for (scope, resource), from the cache or the broker."""
        return self._sync.token(self._core.ticket(scope, resource)).access_token

    async def aget_token(self, scope: Scope = None, resource: str | None = None) -> str:
        """``get_token`` for asyncio."""
        return (await self._async.token(self._core.ticket(scope, resource))).access_token

    def invalidate(self, access_token: str, scope: Scope = None, resource: str | None = None) -> None:
        """Forget ``access_token`` (a resource server refused it); a newer token is kept."""
        self._sync.run(self._core.invalidate(access_token, self._core.key_for(scope, resource), self._sync.cache))

    async def ainvalidate(self, access_token: str, scope: Scope = None, resource: str | None = None) -> None:
        """``invalidate`` for asyncio."""
        await self._async.run(self._core.invalidate(access_token, self._core.key_for(scope, resource), self._async.cache))

    def auth(self, scope: Scope = None, resource: str | None = None) -> BrokerAuth:
        """An ``httpx.Auth`` for ``httpx.Client(auth=...)`` and ``httpx.AsyncClient(auth=...)``."""
        return BrokerAuth(self, scope=scope, resource=resource)


def _dpop_session(dpop: Any, clock: Callable[[], float]) -> DPoPSession | None:
    if dpop is False or dpop is None:
        return None
    key = DPoPKey() if dpop is True else dpop if isinstance(dpop, DPoPKey) else DPoPKey(dpop)
    return DPoPSession(key, clock)
