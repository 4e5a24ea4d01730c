"""HTTP routes: token endpoint (RFC 6749 §3.2), metadata (RFC 8414), JWKS, health, admin API."""

from __future__ import annotations

import os
from typing import Any

import msgspec
from litestar import Request, Response, delete, get, patch, post, route
from litestar.enums import HttpMethod
from litestar.params import FromPath

from app.oauth.access_token import InvalidToken
from app.oauth.clients import InvalidClientMetadata
from litestar.exceptions.http_exceptions import RequestEntityTooLarge

from app.oauth.errors import MethodNotAllowed, OAuthError, RequestTooLarge, ServerError, TemporarilyUnavailable
from app.service.admin import AdminService, Conflict, InsufficientScope, NotFound
from app.store.base import StoreUnavailable
from app.web.responses import JSON, NO_STORE, bearer_error, json_response, oauth_error

_TOKEN_HEADERS = {**NO_STORE}


@post("/token", status_code=200)
async def token(request: Request[Any, Any, Any]) -> Response[bytes]:
    state = request.app.state
    headers = request.headers
    try:
        body = await request.body()
        result = await state.token_service.token(
            body,
            headers.get("content-type"),
            has_authorization="authorization" in headers,
            request_id=os.urandom(12).hex(),
        )
    except OAuthError as exc:
        return oauth_error(exc)
    except RequestEntityTooLarge:
        return oauth_error(RequestTooLarge("body_too_large"))
    except Exception as exc:  # never a traceback or a Litestar error body on the token endpoint
        state.log.error("token.unexpected_error", error=type(exc).__name__)
        return oauth_error(ServerError("unexpected"))
    return Response(result, media_type=JSON, headers=_TOKEN_HEADERS)


@route("/token", http_method=[HttpMethod.GET, HttpMethod.PUT, HttpMethod.DELETE, HttpMethod.PATCH], status_code=405)
async def token_other_methods() -> Response[bytes]:
    return oauth_error(MethodNotAllowed("method_not_allowed", headers={"Allow": "POST"}))


@get("/.well-known/oauth-authorization-server")
async def metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.metadata, media_type=JSON, headers={"Cache-Control": "public, max-age=300"})


@get("/jwks.json")
async def jwks(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.jwks(), media_type="application/jwk-set+json", headers={"Cache-Control": "public, max-age=300"})


@get("/healthz")
async def healthz() -> Response[bytes]:
    return json_response({"status": "ok"})


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    try:
        await request.app.state.health.ping()
    except StoreUnavailable:
        return json_response({"status": "not ready", "redis": "unreachable"}, 503)
    return json_response({"status": "ready", "redis": "ok", "signing_kid": request.app.state.signer().kid})


# -- admin API -------------------------------------------------------------------------------


async def _admin_call(request: Request[Any, Any, Any], op: Any, status: int = 200) -> Response[bytes]:
    admin_service: AdminService = request.app.state.admin_service
    try:
        admin = await admin_service.authenticate(request.headers.get("authorization"))
        result = await op(admin_service, admin)
    except InvalidToken:
        return bearer_error(401, "invalid_token", "The access token is invalid or expired.")
    except InsufficientScope as exc:
        return bearer_error(403, "insufficient_scope", "The access token lacks the required scope.", exc.scope)
    except InvalidClientMetadata as exc:
        return json_response({"error": exc.error, "error_description": exc.detail}, 400)
    except NotFound:
        return json_response({"error": "not_found", "error_description": "No such client or key."}, 404)
    except Conflict:
        return json_response({"error": "invalid_client_metadata", "error_description": "client_id is already registered"}, 409)
    except StoreUnavailable:
        return oauth_error(TemporarilyUnavailable("store_unavailable"))
    if result is None:
        return Response(b"", status_code=204, headers=NO_STORE)
    return json_response(msgspec.to_builtins(result), status)


async def _json_body(request: Request[Any, Any, Any]) -> Any:
    try:
        return msgspec.json.decode(await request.body())
    except msgspec.DecodeError:
        raise InvalidClientMetadata("body_invalid", "the body must be valid JSON") from None


@post("/admin/clients")
async def admin_register(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def op(svc: AdminService, admin: str) -> Any:
        return await svc.register(admin, await _json_body(request))

    return await _admin_call(request, op, 201)


@get("/admin/clients")
async def admin_list(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def op(svc: AdminService, admin: str) -> Any:
        return {"clients": await svc.list()}

    return await _admin_call(request, op)


@get("/admin/clients/{client_id:str}")
async def admin_show(request: Request[Any, Any, Any], client_id: FromPath[str]) -> Response[bytes]:
    async def op(svc: AdminService, admin: str) -> Any:
        return await svc.get(client_id)

    return await _admin_call(request, op)


@patch("/admin/clients/{client_id:str}")
async def admin_update(request: Request[Any, Any, Any], client_id: FromPath[str]) -> Response[bytes]:
    async def op(svc: AdminService, admin: str) -> Any:
        return await svc.update(admin, client_id, await _json_body(request))

    return await _admin_call(request, op)


@delete("/admin/clients/{client_id:str}", status_code=200)
async def admin_delete(request: Request[Any, Any, Any], client_id: FromPath[str]) -> Response[bytes]:
    async def op(svc: AdminService, admin: str) -> Any:
        await svc.delete(admin, client_id)

    return await _admin_call(request, op)


@post("/admin/clients/{client_id:str}/keys")
async def admin_add_key(request: Request[Any, Any, Any], client_id: FromPath[str]) -> Response[bytes]:
    async def op(svc: AdminService, admin: str) -> Any:
        return await svc.add_key(admin, client_id, await _json_body(request))

    return await _admin_call(request, op, 201)


@delete("/admin/clients/{client_id:str}/keys/{kid:str}", status_code=200)
async def admin_remove_key(request: Request[Any, Any, Any], client_id: FromPath[str], kid: FromPath[str]) -> Response[bytes]:
    async def op(svc: AdminService, admin: str) -> Any:
        return await svc.remove_key(admin, client_id, kid)

    return await _admin_call(request, op)


ROUTES = [
    token,
    token_other_methods,
    metadata,
    jwks,
    healthz,
    readyz,
    admin_register,
    admin_list,
    admin_show,
    admin_update,
    admin_delete,
    admin_add_key,
    admin_remove_key,
]
