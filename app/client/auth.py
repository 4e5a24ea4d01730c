"""``httpx.Auth`` for broker tokens: RFC 6750 §2.1 Bearer header, one re-authentication on 401.

When the resource server answers 401 (RFC 6750 §3.1 ``invalid_token``: expired, revoked, keys
rotated), the token that was refused is dropped from the cache, a new one is obtained and the
request is sent once more. Whatever the second answer is, it is returned: the flow never loops.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from app.client.broker import BrokerClient


class BrokerAuth(httpx.Auth):
    # The body is buffered so that the retry can send it again.
    requires_request_body = True

    def __init__(self, client: BrokerClient, *, scope: str | Iterable[str] | None = None, resource: str | None = None) -> None:
        self._client = client
        self._scope = scope
        self._resource = resource

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        token = self._client.get_token(self._scope, self._resource)
        request.headers["Authorization"] = "Bearer " + token
        response = yield request
        if response.status_code == 401:
            response.read()
            self._client.invalidate(token, self._scope, self._resource)
            request.headers["Authorization"] = "Bearer " + self._client.get_token(self._scope, self._resource)
            yield request

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        token = await self._client.aget_token(self._scope, self._resource)
        request.headers["Authorization"] = "Bearer " + token
        response = yield request
        if response.status_code == 401:
            await response.aread()
            await self._client.ainvalidate(token, self._scope, self._resource)
            request.headers["Authorization"] = "Bearer " + await self._client.aget_token(self._scope, self._resource)
            yield request
