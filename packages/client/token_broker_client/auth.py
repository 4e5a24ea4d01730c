"""``httpx.Auth`` for broker tokens: RFC 6750 §2.1 Bearer header, one re-authentication on 401.

When the resource server answers 401 (RFC 6750 §3.1 ``invalid_token``: expired, revoked, keys
rotated), the token that was refused is dropped from the cache, a new one is obtained and the
request is sent once more. Whatever the second answer is, it is returned: the flow never loops.

``bearer_flow`` is that logic without I/O: it yields the requests for httpx to send and the
token steps (``Fetch``, ``Refused``) that the sync and async shells below perform.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from token_broker_client.effects import Done, advance

if TYPE_CHECKING:
    from token_broker_client.broker import BrokerClient


@dataclass(frozen=True)
class Fetch:
    """Get a token (cached or new) for the auth's scope and resource; the flow receives it."""


@dataclass(frozen=True)
class Refused:
    """The resource server answered ``response`` (401) to ``token``: read it and drop the token."""

    token: str
    response: httpx.Response


Step = httpx.Request | Fetch | Refused


def bearer_flow(request: httpx.Request) -> Generator[Step, Any, None]:
    token = yield Fetch()
    request.headers["Authorization"] = "Bearer " + token
    response = yield request
    if response.status_code == 401:
        yield Refused(token, response)
        request.headers["Authorization"] = "Bearer " + (yield Fetch())
        yield request


class BrokerAuth(httpx.Auth):
    # The body is buffered so that the retry can send it again.
    requires_request_body = True

    def __init__(self, client: BrokerClient, *, scope: str | Iterable[str] | None = None, resource: str | None = None) -> None:
        self._client = client
        self._scope = scope
        self._resource = resource

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        flow = bearer_flow(request)
        step = advance(flow)
        while not isinstance(step, Done):
            step = advance(flow, (yield step) if isinstance(step, httpx.Request) else self._perform(step))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = bearer_flow(request)
        step = advance(flow)
        while not isinstance(step, Done):
            step = advance(flow, (yield step) if isinstance(step, httpx.Request) else await self._aperform(step))

    def _perform(self, step: Fetch | Refused) -> str | None:
        if isinstance(step, Refused):
            step.response.read()
            return self._client.invalidate(step.token, self._scope, self._resource)
        return self._client.get_token(self._scope, self._resource)

    async def _aperform(self, step: Fetch | Refused) -> str | None:
        if isinstance(step, Refused):
            await step.response.aread()
            return await self._client.ainvalidate(step.token, self._scope, self._resource)
        return await self._client.aget_token(self._scope, self._resource)
