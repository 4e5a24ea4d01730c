"""``httpx.Auth`` for broker tokens: RFC 6750 §2.1 Bearer header, one re-authentication on 401.

When the resource server answers 401 (RFC 6750 §3.1 ``invalid_token``: expired, revoked, keys
rotated), the token that was refused is dropped from the cache, a new one is obtained and the
request is sent once more. Whatever the second answer is, it is returned: the flow never loops.

``bearer_flow`` is that logic without I/O: it yields the requests for httpx to send and the
token steps (``Fetch``, ``Refused``) that the sync and async shells below perform.

With DPoP on (a ``DPoPSession``), each request goes as ``Authorization: DPoP <token>`` with a fresh
proof of its own ``htm``/``htu`` carrying ``ath`` (RFC 9449 §7.1). A 401 ``use_dpop_nonce``
challenge with a new ``DPoP-Nonce`` (§9) is answered once with a proof carrying that nonce, before
and apart from the one re-authentication: the token was fine, the proof lacked the nonce.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import httpx

from token_broker_client.dpop import DPoPSession
from token_broker_client.effects import Done, advance
from token_broker_jose.dpop import HEADER as DPOP_HEADER

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


def bearer_flow(request: httpx.Request, dpop: DPoPSession | None = None) -> Generator[Step, Any, None]:
    token = yield Fetch()
    response = yield _authorize(request, token, dpop)
    if dpop is not None and dpop.retry_resource_request(request.url, response):
        response = yield _authorize(request, token, dpop)
    if response.status_code == 401:
        yield Refused(token, response)
        response = yield _authorize(request, (yield Fetch()), dpop)
    if dpop is not None:
        dpop.observe(request.url, response)  # the nonce for the next request to this server


def _authorize(request: httpx.Request, token: str, dpop: DPoPSession | None) -> httpx.Request:
    if dpop is None:
        request.headers["Authorization"] = "Bearer " + token
    else:
        request.headers["Authorization"] = "DPoP " + token
        request.headers[DPOP_HEADER] = dpop.proof(request.method, request.url, access_token=token)
    return request


class BrokerAuth(httpx.Auth):
    # The body is buffered so that the retry can send it again.
    requires_request_body = True

    def __init__(self, client: BrokerClient, *, scope: str | Iterable[str] | None = None, resource: str | None = None) -> None:
        self._client = client
        self._scope = scope
        self._resource = resource

    def sync_auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.read()
        flow = bearer_flow(request, self._client.dpop)
        step = advance(flow)
        while not isinstance(step, Done):
            step = advance(flow, (yield step) if isinstance(step, httpx.Request) else self._perform(step))

    async def async_auth_flow(self, request: httpx.Request) -> AsyncGenerator[httpx.Request, httpx.Response]:
        await request.aread()
        flow = bearer_flow(request, self._client.dpop)
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
