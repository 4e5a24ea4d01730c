"""Client-credentials token requests with private_key_jwt: RFC 6749 §4.4, RFC 7523 §2.2, RFC 8414.

``BrokerClient`` discovers the token endpoint from the broker's metadata, asks for tokens with a
fresh assertion each time, and keeps them in memory per (scope, resource) until the jittered
renewal point (``renewal.py``). Concurrent callers that need the same token wait on one lock, so
a cold start makes one token request however many callers there are (``threading.Lock`` for
``get_token``, ``asyncio.Lock`` for ``aget_token``). An optional ``SharedTokenCache`` extends that
to the replicas of one client service.
"""

from __future__ import annotations

import asyncio
import copy
import logging
import random
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import urlsplit

import httpx
from redis.exceptions import RedisError

from app.client.assertion import MAX_LIFETIME, make_client_assertion
from app.client.credentials import ClientKey
from app.client.errors import BrokerError, BrokerUnavailable, error_for
from app.client.renewal import CachedToken, RenewalPolicy
from app.client.shared_cache import AsyncSharedTokenCache, SharedTokenCache, cache_slot

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
METADATA_PATH = "/.well-known/oauth-authorization-server"
_RESPONSE_MAX = 65536

log = logging.getLogger("token_broker.client")

Key = tuple[str, str]  # (scope, resource); "" means the client's registered default


def _scope_text(scope: str | Iterable[str] | None) -> str:
    items = scope.split() if isinstance(scope, str) else list(scope or ())
    return " ".join(sorted(set(items)))


class BrokerClient:
    """Obtain and cache access tokens for one client of the broker.

    ``key`` is a private JWK (dict), a path to a JWK file, a joserfc key, or a ``ClientKey``.
    ``scope``/``resource`` are the defaults for ``get_token()`` and ``auth()``.
    """

    def __init__(
        self,
        issuer: str,
        client_id: str,
        key: Any,
        *,
        alg: str | None = None,
        kid: str | None = None,
        scope: str | Iterable[str] | None = None,
        resource: str | None = None,
        token_endpoint: str | None = None,
        renew_at: float = 0.85,
        jitter: float = 0.05,
        rng: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        timeout: float = 5.0,
        http: httpx.Client | None = None,
        async_http: httpx.AsyncClient | None = None,
        shared_cache: SharedTokenCache | None = None,
        assertion_lifetime: int = MAX_LIFETIME,
    ) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self._key = key if isinstance(key, ClientKey) else ClientKey(key, alg=alg, kid=kid)
        self.scope = _scope_text(scope)
        self.resource = resource or ""
        self._token_endpoint = token_endpoint
        self._policy = RenewalPolicy(renew_at, jitter, rng)
        self._clock = clock
        self._timeout = timeout
        self._http = http
        self._async_http = async_http
        self._shared = shared_cache
        self._assertion_lifetime = assertion_lifetime
        self._tokens: dict[Key, CachedToken] = {}
        self._attempts: dict[Key, int] = {}  # token requests finished, per key
        self._errors: dict[Key, BrokerError] = {}  # the last attempt's error, until one succeeds
        self._guard = threading.Lock()
        self._thread_locks: dict[Key, threading.Lock] = {}
        # asyncio locks belong to one event loop; keep one set per loop.
        self._loop_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Key, asyncio.Lock]] = weakref.WeakKeyDictionary()

    def __repr__(self) -> str:
        return f"BrokerClient(issuer={self.issuer!r}, client_id={self.client_id!r}, key={self._key!r})"

    # -- public API --------------------------------------------------------------------------

    def get_token(self, scope: str | Iterable[str] | None = None, resource: str | None = None) -> str:
        """A valid access token for (scope, resource), from the cache or the broker."""
        return self._token(self._key_for(scope, resource)).access_token

    async def aget_token(self, scope: str | Iterable[str] | None = None, resource: str | None = None) -> str:
        return (await self._atoken(self._key_for(scope, resource))).access_token

    def invalidate(self, access_token: str, scope: str | Iterable[str] | None = None, resource: str | None = None) -> None:
        """Forget ``access_token`` (a resource server refused it); a newer token is kept."""
        key = self._key_for(scope, resource)
        dropped = self._drop(key, access_token)
        if dropped is not None and isinstance(self._shared, SharedTokenCache) and not isinstance(self._shared, AsyncSharedTokenCache):
            try:
                self._shared.discard(self._slot(key), dropped)
            except (RedisError, OSError):
                pass

    async def ainvalidate(self, access_token: str, scope: str | Iterable[str] | None = None, resource: str | None = None) -> None:
        key = self._key_for(scope, resource)
        dropped = self._drop(key, access_token)
        if dropped is not None and isinstance(self._shared, AsyncSharedTokenCache):
            try:
                await self._shared.discard(self._slot(key), dropped)
            except (RedisError, OSError):
                pass

    def auth(self, scope: str | Iterable[str] | None = None, resource: str | None = None) -> Any:
        """An ``httpx.Auth`` for ``httpx.Client(auth=...)`` and ``httpx.AsyncClient(auth=...)``."""
        from app.client.auth import BrokerAuth

        return BrokerAuth(self, scope=scope, resource=resource)

    # -- cache and single flight ---------------------------------------------------------------

    def _key_for(self, scope: str | Iterable[str] | None, resource: str | None) -> Key:
        return (self.scope if scope is None else _scope_text(scope), self.resource if resource is None else resource)

    def _slot(self, key: Key) -> str:
        return cache_slot(self.client_id, *key)

    def _drop(self, key: Key, access_token: str) -> CachedToken | None:
        with self._guard:
            cached = self._tokens.get(key)
            if cached is None or cached.access_token != access_token:
                return None
            del self._tokens[key]
            return cached

    def _fresh(self, key: Key) -> CachedToken | None:
        cached = self._tokens.get(key)
        return cached if cached is not None and cached.fresh(self._clock()) else None

    def _begin(self, key: Key, seen: int) -> BrokerError | None:
        """Under the key's lock: callers that waited through a failed attempt share its error
        instead of each asking the broker again (a wrong key must not become N requests)."""
        failed = self._errors.get(key)
        if failed is not None and self._attempts.get(key, 0) != seen:
            return copy.copy(failed)
        return None

    def _store(self, key: Key, token: CachedToken) -> CachedToken:
        self._attempts[key] = self._attempts.get(key, 0) + 1
        self._errors.pop(key, None)
        self._tokens[key] = token
        return token

    def _failed(self, key: Key, exc: BrokerError, record: bool = True) -> CachedToken:
        """Renewal failed: serve the old token while it is still valid (renewal is early on purpose)."""
        if record:
            self._attempts[key] = self._attempts.get(key, 0) + 1
            self._errors[key] = exc
        cached = self._tokens.get(key)
        if isinstance(exc, BrokerUnavailable) and cached is not None and cached.usable(self._clock()):
            log.warning("client.renewal_failed", extra={"client_id": self.client_id, "error": exc.error})
            return cached
        raise exc

    def _token(self, key: Key) -> CachedToken:
        if (hit := self._fresh(key)) is not None:
            return hit
        with self._guard:
            lock = self._thread_locks.setdefault(key, threading.Lock())
        seen = self._attempts.get(key, 0)
        with lock:
            if (hit := self._fresh(key)) is not None:
                return hit
            if (shared := self._begin(key, seen)) is not None:
                return self._failed(key, shared, record=False)
            try:
                token = self._obtain(key)
            except BrokerError as exc:
                return self._failed(key, exc)
            return self._store(key, token)

    async def _atoken(self, key: Key) -> CachedToken:
        if (hit := self._fresh(key)) is not None:
            return hit
        locks = self._loop_locks.setdefault(asyncio.get_running_loop(), {})
        lock = locks.setdefault(key, asyncio.Lock())
        seen = self._attempts.get(key, 0)
        async with lock:
            if (hit := self._fresh(key)) is not None:
                return hit
            if (shared := self._begin(key, seen)) is not None:
                return self._failed(key, shared, record=False)
            try:
                token = await self._aobtain(key)
            except BrokerError as exc:
                return self._failed(key, exc)
            return self._store(key, token)

    def _obtain(self, key: Key) -> CachedToken:
        cache = self._shared
        if cache is None or isinstance(cache, AsyncSharedTokenCache):
            return self._request(key)
        slot, deadline, owner = self._slot(key), time.monotonic() + cache.wait, None
        try:
            while owner is None:
                entry = cache.get(slot)
                if entry is not None and entry.fresh(self._clock()):
                    return entry
                owner = cache.lock(slot)
                if owner is None:
                    if time.monotonic() >= deadline:
                        return self._request(key)  # the lock holder is slow or gone
                    time.sleep(cache.poll)
        except (RedisError, OSError):
            return self._request(key)
        try:
            try:  # another replica may have stored it just before we locked
                entry = cache.get(slot)
            except (RedisError, OSError):
                entry = None
            if entry is not None and entry.fresh(self._clock()):
                return entry
            token = self._request(key)
            try:
                cache.put(slot, token, self._clock())
            except (RedisError, OSError):
                pass
            return token
        finally:
            try:
                cache.unlock(slot, owner)
            except (RedisError, OSError):
                pass

    async def _aobtain(self, key: Key) -> CachedToken:
        cache = self._shared
        if not isinstance(cache, AsyncSharedTokenCache):
            return await self._arequest(key)
        slot, deadline, owner = self._slot(key), time.monotonic() + cache.wait, None
        try:
            while owner is None:
                entry = await cache.get(slot)
                if entry is not None and entry.fresh(self._clock()):
                    return entry
                owner = await cache.lock(slot)
                if owner is None:
                    if time.monotonic() >= deadline:
                        return await self._arequest(key)
                    await asyncio.sleep(cache.poll)
        except (RedisError, OSError):
            return await self._arequest(key)
        try:
            try:  # another replica may have stored it just before we locked
                entry = await cache.get(slot)
            except (RedisError, OSError):
                entry = None
            if entry is not None and entry.fresh(self._clock()):
                return entry
            token = await self._arequest(key)
            try:
                await cache.put(slot, token, self._clock())
            except (RedisError, OSError):
                pass
            return token
        finally:
            try:
                await cache.unlock(slot, owner)
            except (RedisError, OSError):
                pass

    # -- HTTP ------------------------------------------------------------------------------------

    def _form(self, key: Key, token_endpoint: str) -> dict[str, str]:
        assertion = make_client_assertion(
            self._key.key, client_id=self.client_id, issuer=self.issuer, alg=self._key.alg, kid=self._key.kid,
            lifetime=self._assertion_lifetime, now=self._clock(),
        )
        form = {"grant_type": "client_credentials", "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion}
        if key[0]:
            form["scope"] = key[0]
        if key[1]:
            form["resource"] = key[1]
        return form

    def _request(self, key: Key) -> CachedToken:
        try:
            if self._http is not None:
                return self._exchange(self._http, key)
            with httpx.Client(timeout=self._timeout) as http:
                return self._exchange(http, key)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable("unreachable", description=type(exc).__name__) from None

    def _exchange(self, http: httpx.Client, key: Key) -> CachedToken:
        if self._token_endpoint is None:
            self._token_endpoint = self._parse_metadata(http.get(self.issuer + METADATA_PATH, timeout=self._timeout))
        started = self._clock()
        response = http.post(self._token_endpoint, data=self._form(key, self._token_endpoint), timeout=self._timeout)
        return self._parse_token(response, started, key)

    async def _arequest(self, key: Key) -> CachedToken:
        try:
            if self._async_http is not None:
                return await self._aexchange(self._async_http, key)
            async with httpx.AsyncClient(timeout=self._timeout) as http:
                return await self._aexchange(http, key)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable("unreachable", description=type(exc).__name__) from None

    async def _aexchange(self, http: httpx.AsyncClient, key: Key) -> CachedToken:
        if self._token_endpoint is None:
            self._token_endpoint = self._parse_metadata(await http.get(self.issuer + METADATA_PATH, timeout=self._timeout))
        started = self._clock()
        response = await http.post(self._token_endpoint, data=self._form(key, self._token_endpoint), timeout=self._timeout)
        return self._parse_token(response, started, key)

    def _parse_metadata(self, response: httpx.Response) -> str:
        """RFC 8414 §3.3: the document's issuer must be the configured issuer, byte for byte."""
        doc = _json(response)
        if response.status_code != 200 or not isinstance(doc, dict):
            raise BrokerUnavailable("metadata_unavailable", status_code=response.status_code)
        endpoint = doc.get("token_endpoint")
        if doc.get("issuer") != self.issuer or not isinstance(endpoint, str) or not _safe_url(endpoint):
            raise BrokerError("metadata_invalid", status_code=response.status_code,
                              description="issuer mismatch or unusable token_endpoint")
        return endpoint

    def _parse_token(self, response: httpx.Response, started: float, key: Key) -> CachedToken:
        body = _json(response)
        if response.status_code == 200:
            if (isinstance(body, dict) and isinstance(body.get("access_token"), str) and body["access_token"]
                    and str(body.get("token_type", "")).lower() == "bearer"
                    and type(body.get("expires_in")) is int and body["expires_in"] > 0):
                log.info("client.token_obtained", extra={"client_id": self.client_id, "expires_in": body["expires_in"]})
                scope = body.get("scope") if isinstance(body.get("scope"), str) else key[0]
                return self._policy.token(body["access_token"], scope, started, body["expires_in"])
            raise BrokerUnavailable("invalid_response", status_code=200, description="not a token response")
        code = body.get("error") if isinstance(body, dict) and isinstance(body.get("error"), str) else None
        description = body.get("error_description") if isinstance(body, dict) and isinstance(body.get("error_description"), str) else None
        retry_after = _retry_after(response.headers.get("retry-after"))
        if code is None:
            if response.status_code >= 500 or response.status_code == 429:
                raise BrokerUnavailable("unavailable", status_code=response.status_code, retry_after=retry_after)
            raise BrokerError("invalid_response", status_code=response.status_code)
        log.warning("client.token_refused", extra={"client_id": self.client_id, "error": code, "status": response.status_code})
        raise error_for(code, response.status_code, description, retry_after)


def _json(response: httpx.Response) -> Any:
    if len(response.content) > _RESPONSE_MAX:
        return None
    try:
        return response.json()
    except ValueError:
        return None


def _retry_after(value: str | None) -> float | None:
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None


def _safe_url(url: str) -> bool:
    """Credentials go over TLS, except to a broker on loopback (development, the demo)."""
    parts = urlsplit(url)
    return parts.scheme == "https" or (parts.scheme == "http" and parts.hostname in ("127.0.0.1", "localhost", "::1"))
