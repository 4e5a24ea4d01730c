"""Protect any ASGI app (Litestar, Starlette, FastAPI, plain ASGI) with broker tokens: RFC 6750.

``BearerMiddleware`` answers 400/401/403 itself (RFC 6750 §3) and passes verified requests on
with the ``AccessToken`` at ``scope["auth"]`` (Litestar's ``request.auth``). ``authenticate`` is
the same check as a plain function for code that wants to render its own answers.

DPoP (RFC 9449 §7.1) is the verifier's option (``ResourceVerifier(..., dpop=DPoPPolicy(...))``):
the same middleware and ``require_bearer`` then accept ``Authorization: DPoP`` with its ``DPoP``
proof header as well (or only, with ``DPoPPolicy(required=True)``) and challenge both schemes.

Litestar, per route or per app::

    @get("/data", middleware=[require_bearer(verifier, scopes=["read"])])
    async def data(request: Request) -> dict: return {"client": request.auth.client_id}
"""

from __future__ import annotations

import functools
import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from token_broker_jose.constants import BODY_MAX
from token_broker_jose.dpop import HEADER as DPOP_HEADER
from token_broker_resource.bearer import DPOP, BearerError, extract_token, form_has_token
from token_broker_resource.verifier import AccessToken, ResourceVerifier, VerifierUnavailable

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class _BodyTooLarge(Exception):
    pass


async def authenticate(
    verifier: ResourceVerifier, scope: Scope, receive: Receive, *, scopes: Iterable[str] = (), body_max: int = BODY_MAX
) -> tuple[AccessToken, Receive]:
    """Verify the request's Bearer token (or DPoP token and proof, when the verifier accepts DPoP).
    Returns the token and a ``receive`` that replays any body read to look for a form-encoded token.
    Raises ``BearerError`` or ``VerifierUnavailable``."""
    headers = scope.get("headers", ())
    authorization = [v.decode("latin-1") for k, v in headers if k == b"authorization"]
    content_type = next((v.decode("latin-1") for k, v in headers if k == b"content-type"), None)
    replay = receive
    form_token = False
    if content_type and content_type.split(";")[0].strip().lower() == "application/x-www-form-urlencoded":
        body, replay = await _buffer(receive, body_max)
        form_token = form_has_token(content_type, body)
    scheme, token = extract_token(authorization, query_string=scope.get("query_string", b""), form_token=form_token,
                                  schemes=verifier.schemes)
    if scheme == DPOP and verifier.dpop is not None:
        proof_name = DPOP_HEADER.lower().encode()
        proofs = [v.decode("latin-1") for k, v in headers if k == proof_name]
        return await verifier.verify_dpop(token, proofs, method=scope["method"], url=verifier.dpop.request_url(scope),
                                          scopes=scopes), replay
    return await verifier.verify(token, scopes), replay


async def _buffer(receive: Receive, limit: int) -> tuple[bytes, Receive]:
    chunks, size, more = [], 0, True
    while more:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise _BodyTooLarge
        chunks.append(chunk)
        more = message.get("more_body", False)
    body = b"".join(chunks)
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return body, replay


class BearerMiddleware:
    def __init__(self, app: ASGIApp, verifier: ResourceVerifier, *, scopes: Iterable[str] = (), realm: str = "api",
                 body_max: int = BODY_MAX) -> None:
        self.app = app
        self.verifier = verifier
        self.scopes = tuple(scopes)
        self.realm = realm
        self.body_max = body_max

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            token, receive = await authenticate(self.verifier, scope, receive, scopes=self.scopes, body_max=self.body_max)
        except BearerError as exc:
            await _respond(send, exc.status, exc.headers(self.realm, **self.verifier.challenge_options()), exc.body())
            return
        except VerifierUnavailable:
            body = {"error": "temporarily_unavailable", "error_description": "The token cannot be checked right now."}
            await _respond(send, 503, [(b"content-type", b"application/json"), (b"cache-control", b"no-store"),
                                       (b"retry-after", b"5")], json.dumps(body).encode())
            return
        except _BodyTooLarge:
            await _respond(send, 413, [(b"content-type", b"application/json"), (b"cache-control", b"no-store")],
                           b'{"error":"invalid_request"}')
            return
        scope["auth"] = token
        nonces = self.verifier.dpop.nonces if self.verifier.dpop is not None else None
        await self.app(scope, receive, send if nonces is None else _with_nonce(send, nonces.current()))


def require_bearer(verifier: ResourceVerifier, *, scopes: Iterable[str] = (), realm: str = "api") -> Callable[..., ASGIApp]:
    """A middleware factory: ``factory(app=...)`` as Litestar's ``middleware=[...]`` expects."""
    return functools.partial(BearerMiddleware, verifier=verifier, scopes=tuple(scopes), realm=realm)


def _with_nonce(send: Send, nonce: str) -> Send:
    """RFC 9449 §9: the app's answer carries the current nonce for the client's next proof."""

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), (b"dpop-nonce", nonce.encode())]}
        await send(message)

    return sending


async def _respond(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
