"""Resource-server fixtures: a broker signing key made at test time, its metadata and JWKS served
through httpx's in-memory transport (which counts fetches), and a protected ASGI app."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from app.keystore import public_jwk
from tests.conftest import FrozenClock
from tests.helpers import ISS, RS1, new_key, sign
from token_broker_resource import BearerMiddleware, ResourceVerifier

BROKER_KID = "broker-1"


class Authority:
    """What a resource server sees of the broker: metadata and a JWKS, with request counts."""

    def __init__(self, clock: FrozenClock) -> None:
        self.clock = clock
        self.key = new_key("ES256")
        self.keys = [public_jwk(self.key, alg="ES256", kid=BROKER_KID)]
        self.requests: list[str] = []
        self.down = False

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request.url.path)
        if self.down:
            return httpx.Response(503)
        if request.url.path == "/.well-known/oauth-authorization-server":
            return httpx.Response(200, json={"issuer": ISS, "jwks_uri": ISS + "/jwks.json", "token_endpoint": ISS + "/token"})
        if request.url.path == "/jwks.json":
            return httpx.Response(200, json={"keys": self.keys})
        return httpx.Response(404)

    @property
    def jwks_fetches(self) -> int:
        return self.requests.count("/jwks.json")

    def claims(self, **overrides: Any) -> dict[str, Any]:
        now = int(self.clock.now)
        claims = {"iss": ISS, "sub": "c1", "client_id": "c1", "aud": RS1, "scope": "read", "jti": uuid.uuid4().hex,
                  "iat": now, "exp": now + 300}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def token(self, header: dict[str, Any] | None = None, key: Any = None, **claims: Any) -> str:
        hdr = {"alg": "ES256", "kid": BROKER_KID, "typ": "at+jwt"} if header is None else header
        return sign(hdr, self.claims(**claims), key or self.key)


@pytest.fixture
def authority(clock: FrozenClock) -> Authority:
    return Authority(clock)


@pytest.fixture
def verifier(authority: Authority, clock: FrozenClock) -> ResourceVerifier:
    http = httpx.AsyncClient(transport=httpx.MockTransport(authority.handler))
    return ResourceVerifier(ISS, RS1, http=http, clock=clock, leeway=10, unknown_kid_cooldown=30)


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """The protected app: reports who called it (the client) and nothing about a 'user'."""
    import json

    body = json.dumps({"client_id": scope["auth"].client_id, "scopes": sorted(scope["auth"].scopes),
                       "user": scope.get("user")}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


@pytest.fixture
def call(verifier: ResourceVerifier) -> Callable[..., httpx.Response]:
    """Send one request through ``BearerMiddleware(scopes=['read'])`` and return the response."""

    def call(method: str = "GET", url: str = "/data", scopes: tuple[str, ...] = ("read",), **kw: Any) -> httpx.Response:
        app = BearerMiddleware(echo_app, verifier, scopes=scopes, realm="api")

        async def run() -> httpx.Response:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=RS1) as client:
                return await client.request(method, url, **kw)

        return asyncio.run(run())

    return call
