"""The broker's verification keys, for a resource server: RFC 8414 §3 metadata → ``jwks_uri``.

Keys are cached and refreshed every ``max_age`` seconds. A token signed with a kid the cache
does not know triggers one refetch (the broker may have rotated), at most once per ``cooldown``
seconds, so a flood of made-up kids costs one request per cooldown, not one per token.
A failed refresh keeps the old keys; with no keys at all the verifier is unavailable (503).
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Iterable
from typing import Any

import httpx

from token_broker_jose.access_token import verification_keys_from_jwks
from token_broker_jose.constants import FETCHED_DOCUMENT_MAX, METADATA_PATH
from token_broker_jose.jose import VerificationKey

log = logging.getLogger("token_broker.resource")


class VerifierUnavailable(Exception):
    """The broker's keys (or its introspection endpoint) cannot be reached: answer 503."""


class BrokerKeys:
    def __init__(
        self,
        issuer: str,
        *,
        algorithms: Iterable[str],
        http: httpx.AsyncClient | None = None,
        clock: Callable[[], float] = time.time,
        max_age: float = 300.0,
        cooldown: float = 30.0,
        timeout: float = 3.0,
    ) -> None:
        self.issuer = issuer
        self.algorithms = frozenset(algorithms)
        self._http = http
        self._clock = clock
        self.max_age = max_age
        self.cooldown = cooldown
        self._timeout = timeout
        self._keys: dict[str, VerificationKey] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
        self._attempts = 0
        self._kid_refetch_at: float | None = None
        self._jwks_uri: str | None = None
        self.metadata: dict[str, Any] = {}
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = weakref.WeakKeyDictionary()

    async def current(self) -> dict[str, VerificationKey]:
        now = self._clock()
        stale = self._fetched_at is None or now - self._fetched_at >= self.max_age
        # After a failed attempt, wait before the next one: 1 s with no keys, the cooldown otherwise.
        pause = 1.0 if not self._keys else self.cooldown
        if stale and (self._attempted_at is None or now - self._attempted_at >= pause):
            await self._refresh(self._attempts)
        if not self._keys:
            raise VerifierUnavailable("no broker keys")
        return self._keys

    async def refresh_for_unknown_kid(self) -> bool:
        """Refetch unless one was attempted within the cooldown; True if the key set changed."""
        now = self._clock()
        if self._kid_refetch_at is not None and now - self._kid_refetch_at < self.cooldown:
            return False
        self._kid_refetch_at = now
        before = self._keys
        await self._refresh(self._attempts)
        return self._keys is not before

    async def _refresh(self, seen: int) -> None:
        lock = self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:
            if self._attempts != seen:  # another task fetched (or tried) while we waited
                return
            self._attempted_at = self._clock()
            self._attempts += 1
            try:
                keys = await self._fetch()
            except (httpx.HTTPError, ValueError) as exc:
                log.warning("resource.jwks_fetch_failed", extra={"issuer": self.issuer, "error": type(exc).__name__})
                return
            self._keys = {kid: k for kid, k in keys.items() if k.alg in self.algorithms}
            self._fetched_at = self._clock()

    async def _fetch(self) -> dict[str, VerificationKey]:
        if self._http is not None:
            return await self._fetch_with(self._http)
        async with httpx.AsyncClient(timeout=self._timeout) as http:
            return await self._fetch_with(http)

    async def _fetch_with(self, http: httpx.AsyncClient) -> dict[str, VerificationKey]:
        if self._jwks_uri is None:
            doc = _document(await http.get(self.issuer + METADATA_PATH, timeout=self._timeout))
            # RFC 8414 §3.3: the metadata must name the issuer we trust, byte for byte.
            if doc.get("issuer") != self.issuer or not isinstance(doc.get("jwks_uri"), str):
                raise ValueError("metadata issuer mismatch or no jwks_uri")
            self.metadata, self._jwks_uri = doc, doc["jwks_uri"]
        return verification_keys_from_jwks(_document(await http.get(self._jwks_uri, timeout=self._timeout)))


def _document(response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200 or len(response.content) > FETCHED_DOCUMENT_MAX:
        raise ValueError(f"HTTP {response.status_code}")
    doc = response.json()
    if not isinstance(doc, dict):
        raise ValueError("not a JSON object")
    return doc
