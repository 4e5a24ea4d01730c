"""The floor: the ceiling's work and nothing else, behind the same HTTP server (``--compare-server floor``).

A bare ASGI app (no Litestar, no middleware, no logging, no metrics, no checks beyond the
assertion's own) run by uvicorn with httptools and uvloop, one worker, pinned like the broker. Per
request it does exactly what the ceiling counts: ``parse_assertion`` + ``verify_assertion`` against
the prepared client, one ``RedisTokenStore.consume_and_lookup`` through the broker's Redis client,
and ``TokenSigner.sign`` unless the request asks for the hit scenario's scope (then a token signed
at start is returned, as a cache hit returns its stored token). Its requests per CPU-second are
what any ASGI endpoint on this stack can reach on this machine; the broker's share of the ceiling
is bounded by the floor's. Measurement only: it answers nothing but a well-formed request of the
benchmark (anything else is a 400 with no body) and is never part of the broker.

Configured by one JSON file named in ``FLOOR_CONFIG``: issuer, redis_url, hit_scope, clients
(the metadata the benchmark registers with the broker).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any
from urllib.parse import unquote_plus

import httptools
import msgspec
from joserfc.jwk import ECKey

from app.config import Settings
from app.oauth.access_token import AccessTokenClaims, TokenSigner, new_token_id
from app.oauth.assertion import parse_assertion, verify_assertion
from app.oauth.clients import ClientRecord, prepare_client
from app.service.client_auth import assertion_policy
from app.store.redis import connect
from app.store.token_cache import RedisTokenStore

_JSON = [(b"content-type", b"application/json"), (b"cache-control", b"no-store")]


class _Floor:
    def __init__(self, config: dict[str, Any]) -> None:
        settings = Settings(issuer=config["issuer"], redis_url=config["redis_url"])
        self.policy = assertion_policy(settings)
        self.clients = {m["client_id"]: prepare_client(msgspec.convert(m, ClientRecord)) for m in config["clients"]}
        self.hit_scope = config["hit_scope"]
        self.issuer = settings.issuer
        self.signer = TokenSigner(ECKey.generate_key("P-256"), "floor", "ES256")
        self.store = RedisTokenStore(connect(settings.redis_url, timeout=settings.redis_timeout,
                                             retries=settings.redis_retries),
                                     timeout=settings.redis_timeout, retries=settings.redis_retries)
        self.request_id = os.urandom(12).hex()
        self.cached = self._answer("floor-hit", self.hit_scope, int(time.time()))

    def _answer(self, client_id: str, scope: str, now: int) -> bytes:
        token = self.signer.sign(AccessTokenClaims(iss=self.issuer, sub=client_id, client_id=client_id,
                                                   aud="https://rs.example", scope=scope, jti=new_token_id(),
                                                   iat=now, exp=now + 300))
        return json.dumps({"access_token": token, "token_type": "Bearer", "expires_in": 300, "scope": scope}).encode()

    async def token(self, body: bytes) -> bytes:
        fields = dict(part.split("=", 1) for part in body.decode("ascii").split("&"))
        parsed = parse_assertion(fields["client_assertion"], self.policy)
        client = self.clients[parsed.client_id]
        now = time.time()
        verify_assertion(parsed, client, self.policy, now)
        scope = unquote_plus(fields.get("scope", ""))
        await self.store.consume_and_lookup(parsed.client_id, parsed.claims["jti"], self.request_id, 300_000,
                                            scope)
        return self.cached if scope == self.hit_scope else self._answer(parsed.client_id, scope, int(now))


_floor: _Floor | None = None


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    global _floor
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                with open(os.environ["FLOOR_CONFIG"]) as f:
                    _floor = _Floor(json.load(f))
                await send({"type": "lifespan.startup.complete"})
            else:
                if _floor is not None:
                    await _floor.store.redis.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return
    body = b""
    more = True
    while more:
        message = await receive()
        body += message.get("body", b"")
        more = message.get("more_body", False)
    assert _floor is not None
    try:
        payload = await _floor.token(body) if scope["path"] == "/token" else b"{}"
        status = 200
    except Exception:  # measurement only: the benchmark counts any non-200 as unexpected
        payload, status = b"", 400
    await send({"type": "http.response.start", "status": status, "headers": _JSON})
    await send({"type": "http.response.body", "body": payload})


class _RawProtocol:
    """HTTP/1.1 keep-alive over httptools' parser straight to ``_Floor.token``: no ASGI server."""

    def __init__(self) -> None:
        self.parser = httptools.HttpRequestParser(self)
        self.transport: Any = None
        self.loop: Any = None
        self.body: list[bytes] = []
        self.url = b""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.loop = asyncio.get_running_loop()  # once per connection, not per request (a getpid each)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except Exception:
            self.transport.close()

    def eof_received(self) -> None:
        pass

    def on_message_begin(self) -> None:
        self.body = []
        self.url = b""

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_body(self, body: bytes) -> None:
        self.body.append(body)

    def on_message_complete(self) -> None:
        self.loop.create_task(self._answer(self.url, b"".join(self.body)))

    async def _answer(self, url: bytes, body: bytes) -> None:
        assert _floor is not None
        try:
            payload, status = (await _floor.token(body) if url == b"/token" else b"{}"), b"200 OK"
        except Exception:
            payload, status = b"", b"400 Bad Request"
        if self.transport is not None:
            self.transport.write(b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncache-control: no-store"
                                 b"\r\ncontent-length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)


def serve_raw(port: int) -> None:
    """``python -m scripts.bench.floor PORT``: the floor on the raw protocol (uvloop)."""
    import uvloop

    async def main() -> None:
        global _floor
        with open(os.environ["FLOOR_CONFIG"]) as f:
            _floor = _Floor(json.load(f))
        server = await asyncio.get_running_loop().create_server(_RawProtocol, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


if __name__ == "__main__":
    import sys

    serve_raw(int(sys.argv[1]))
