"""The two shells around ``TokenFlow``: blocking I/O for ``get_token``, asyncio for ``aget_token``.

Each shell holds the single-flight locks of its kind (a ``threading.Lock`` per (scope, resource);
an ``asyncio.Lock`` per (scope, resource) and event loop, since asyncio locks belong to one loop)
and performs the effects a flow yields: requests to the broker, shared-cache commands, pauses.
A failed effect is thrown into the flow, which decides what it means; that includes
cancellation, so a lock holder still releases the shared lock.
"""

from __future__ import annotations

import asyncio
import threading
import time
import weakref
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx

from token_broker_client.effects import Done, Effect, HttpCall, Sleep, advance
from token_broker_client.flow import Key, Ticket, TokenFlow
from token_broker_client.renewal import CachedToken
from token_broker_client.shared_cache import AsyncSharedTokenCache, SharedTokenCache

T = TypeVar("T")


@dataclass(frozen=True)
class HttpSettings:
    """How the client reaches the broker.

    ``client``/``async_client`` are your own ``httpx.Client``/``httpx.AsyncClient`` (proxies, TLS,
    event hooks) for the blocking and the asyncio calls; without one, each request to the broker
    uses a short-lived client with ``timeout``. ``timeout`` applies to every request either way.
    """

    timeout: float = 5.0
    client: httpx.Client | None = None
    async_client: httpx.AsyncClient | None = None


class SyncShell:
    """Runs flows for ``get_token``/``invalidate``: ``httpx.Client``, ``time.sleep``, a ``SharedTokenCache``."""

    def __init__(self, core: TokenFlow, http: HttpSettings, cache: SharedTokenCache | None) -> None:
        self._core, self._http, self.cache = core, http, cache
        self._guard = threading.Lock()
        self._locks: dict[Key, threading.Lock] = {}

    def token(self, ticket: Ticket) -> CachedToken:
        if ticket.hit is not None:
            return ticket.hit
        with self._guard:
            lock = self._locks.setdefault(ticket.key, threading.Lock())
        with lock:
            return self.run(self._core.obtain(ticket, self.cache))

    def run(self, flow: Generator[Effect, Any, T]) -> T:
        step = advance(flow)
        while not isinstance(step, Done):
            step = advance(flow, *self._outcome(step))
        return step.value

    def _outcome(self, effect: Effect) -> tuple[Any, BaseException | None]:
        try:
            return self._perform(effect), None
        except BaseException as exc:  # thrown into the flow (see the module docstring)
            return None, exc

    def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, HttpCall):
            return self._send(effect)
        if isinstance(effect, Sleep):
            return time.sleep(effect.seconds)
        assert self.cache is not None  # only a flow given the cache yields its commands
        return self.cache.execute(effect)

    def _send(self, call: HttpCall) -> httpx.Response:
        if self._http.client is not None:
            return self._http.client.request(call.method, call.url, data=call.form, headers=call.headers,
                                             timeout=self._http.timeout)
        with httpx.Client(timeout=self._http.timeout) as http:
            return http.request(call.method, call.url, data=call.form, headers=call.headers)


class AsyncShell:
    """Runs flows for ``aget_token``/``ainvalidate``: ``httpx.AsyncClient``, ``asyncio.sleep``, an
    ``AsyncSharedTokenCache``."""

    def __init__(self, core: TokenFlow, http: HttpSettings, cache: AsyncSharedTokenCache | None) -> None:
        self._core, self._http, self.cache = core, http, cache
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Key, asyncio.Lock]] = weakref.WeakKeyDictionary()

    async def token(self, ticket: Ticket) -> CachedToken:
        if ticket.hit is not None:
            return ticket.hit
        lock = self._locks.setdefault(asyncio.get_running_loop(), {}).setdefault(ticket.key, asyncio.Lock())
        async with lock:
            return await self.run(self._core.obtain(ticket, self.cache))

    async def run(self, flow: Generator[Effect, Any, T]) -> T:
        step = advance(flow)
        while not isinstance(step, Done):
            step = advance(flow, *(await self._outcome(step)))
        return step.value

    async def _outcome(self, effect: Effect) -> tuple[Any, BaseException | None]:
        try:
            return await self._perform(effect), None
        except BaseException as exc:  # thrown into the flow (see the module docstring)
            return None, exc

    async def _perform(self, effect: Effect) -> Any:
        if isinstance(effect, HttpCall):
            return await self._send(effect)
        if isinstance(effect, Sleep):
            return await asyncio.sleep(effect.seconds)
        assert self.cache is not None  # only a flow given the cache yields its commands
        return await self.cache.execute(effect)

    async def _send(self, call: HttpCall) -> httpx.Response:
        if self._http.async_client is not None:
            return await self._http.async_client.request(call.method, call.url, data=call.form, headers=call.headers,
                                                         timeout=self._http.timeout)
        async with httpx.AsyncClient(timeout=self._http.timeout) as http:
            return await http.request(call.method, call.url, data=call.form, headers=call.headers)
