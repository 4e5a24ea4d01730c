"""HTTP routes of the public listener: token endpoint (RFC 6749 §3.2), revocation (RFC 7009),
introspection (RFC 7662), metadata (RFC 8414), JWKS, OpenAPI, admin API. Health, readiness and
metrics are on the management listener only (``app.web.management``)."""

from __future__ import annotations

import logging
from typing import Any

import msgspec
from litestar import Request, Response, asgi, delete, get, patch, post, put, route
from litestar.enums import HttpMethod
from litestar.exceptions.http_exceptions import RequestEntityTooLarge
from litestar.params import FromPath

from app.log import current_request_id
from app.oauth.access_token import InvalidToken
from app.oauth.clients import InvalidClientMetadata
from app.oauth.constants import AUTHORIZE_PATH, METADATA_PATH, OPENID_CONFIGURATION_PATH
from app.oauth.errors import (
    MethodNotAllowed,
    OAuthError,
    RequestTooLarge,
    ServerError,
    TemporarilyUnavailable,
    UnsupportedResponseType,
)
from app.service.admin import AdminService, Conflict, InsufficientScope, NotFound
from app.service.client_auth import EndpointRequest
from app.service.trust_admin import IssuerNotFound, TrustAdmin
from app.store.base import RecordUnreadable, StoreUnavailable
from app.web.metrics import record_token_outcome
from app.web.responses import JSON, NO_STORE, bearer_error, json_response, oauth_error

_JSON_NO_STORE = [
    (b"content-type", b"application/json"),
    (b"cache-control", b"no-store"),
    (b"pragma", b"no-cache"),
]


def _endpoint_request(scope: Any, body: bytes) -> EndpointRequest:
    """The one value a client-authenticated endpoint's service takes, read from the ASGI scope
    (the plain-ASGI /token handler and the Litestar handlers share it)."""
    content_type: str | None = None
    has_authorization = False
    dpop: tuple[str, ...] = ()
    for name, value in scope["headers"]:
        if name == b"content-type":
            content_type = value.decode("latin-1")
        elif name == b"authorization":
            has_authorization = True
        elif name == b"dpop":  # RFC 9449 §4.1; more than one is refused (app.oauth.dpop)
            dpop += (value.decode("latin-1"),)
    client = scope.get("client")  # after BROKER_TRUSTED_PROXIES (uvicorn's proxy headers middleware)
    return EndpointRequest(body, content_type, has_authorization, current_request_id(), client[0] if client else None,
                           dpop)


@asgi("/token", copy_scope=False)
async def token(scope: Any, receive: Any, send: Any) -> None:
    """``POST /token``: the hot path, served as a plain ASGI handler.

    ``app.web.app.token_first`` routes ``/token`` here before Litestar's router, through the same
    middleware (Litestar's route is kept for the other spellings of the path, which the strict
    middleware refuses); no Request/Response objects are built:
    the body is read with the size cap enforced as it arrives, the service returns the JSON bytes,
    and the answer is two ASGI messages. Other methods get 405 with ``Allow: POST``.
    """
    state = scope["litestar_app"].state
    if scope["method"] != "POST":
        await send_error(send, MethodNotAllowed("method_not_allowed", headers={"Allow": "POST"}))
        return
    try:
        body = await _read_body(receive, state.settings.body_max)
        request = _endpoint_request(scope, body)
        result = await state.token_service.token(request)
    except OAuthError as exc:
        record_token_outcome(state.metrics, exc)
        await send_error(send, exc)
        return
    except Exception as exc:  # never a traceback or a Litestar error body on the token endpoint
        state.log.error("token.unexpected_error", error=type(exc).__name__)
        error = ServerError("unexpected")
        record_token_outcome(state.metrics, error)
        await send_error(send, error)
        return
    record_token_outcome(state.metrics, None)
    headers = [*_JSON_NO_STORE, (b"content-length", str(len(result)).encode())]
    if request.dpop and (nonce := state.token_service.dpop_nonce()) is not None:  # RFC 9449 §8
        headers.append((b"dpop-nonce", nonce.encode("ascii")))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": result})


async def _read_body(receive: Any, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise OAuthError("client_disconnected")
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:  # stop reading: a 10 MB body costs no more than 64 KiB of it
                raise RequestTooLarge("body_too_large")
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def send_error(send: Any, exc: OAuthError) -> None:
    body = exc.body()
    headers = [*_JSON_NO_STORE, (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _token_op(request: Request[Any, Any, Any], service: Any, endpoint: str) -> Any:
    """RFC 7009 / RFC 7662 call: the service's answer, or an OAuth error response (never a traceback)."""
    try:
        return await service(_endpoint_request(request.scope, await request.body()))
    except OAuthError as exc:
        return oauth_error(exc)
    except RequestEntityTooLarge:
        return oauth_error(RequestTooLarge("body_too_large"))
    except Exception as exc:
        request.app.state.log.error(f"{endpoint}.unexpected_error", error=type(exc).__name__)
        return oauth_error(ServerError("unexpected"))


@post("/revoke", status_code=200)
async def revoke(request: Request[Any, Any, Any]) -> Response[bytes]:
    """RFC 7009 §2: 200 with an empty body whether or not there was anything to revoke."""
    result = await _token_op(request, request.app.state.revocation_service.revoke, "revocation")
    if isinstance(result, Response):
        return result
    return Response(b"", status_code=200, headers=NO_STORE)


@post("/introspect", status_code=200)
async def introspect(request: Request[Any, Any, Any]) -> Response[bytes]:
    """RFC 7662 §2.2."""
    result = await _token_op(request, request.app.state.introspection_service.introspect, "introspection")
    if isinstance(result, Response):
        return result
    return Response(result, media_type=JSON, headers=NO_STORE)


@route(["/revoke", "/introspect"], http_method=[HttpMethod.GET, HttpMethod.PUT, HttpMethod.DELETE, HttpMethod.PATCH],
       status_code=405)
async def token_op_other_methods() -> Response[bytes]:
    return oauth_error(MethodNotAllowed("method_not_allowed", headers={"Allow": "POST"}))


@get(METADATA_PATH)
async def metadata(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.metadata(), media_type=JSON, headers={"Cache-Control": "public, max-age=300"})


@get(OPENID_CONFIGURATION_PATH)
async def openid_configuration(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.openid_configuration(), media_type=JSON,
                    headers={"Cache-Control": "public, max-age=300"})


@route(AUTHORIZE_PATH, http_method=[HttpMethod.GET, HttpMethod.POST])
async def authorize() -> Response[bytes]:
    """Named by the openid-configuration document only; refuses every request (no redirect: the
    broker knows no redirect URIs, RFC 6749 §4.1.2.1)."""
    return oauth_error(UnsupportedResponseType("authorization_endpoint"))


@get("/jwks.json")
async def jwks(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.jwks(), media_type="application/jwk-set+json", headers={"Cache-Control": "public, max-age=300"})


@get("/openapi.json")
async def openapi(request: Request[Any, Any, Any]) -> Response[bytes]:
    return Response(request.app.state.openapi, media_type=JSON, headers={"Cache-Control": "public, max-age=300"})


# -- admin API -------------------------------------------------------------------------------


async def _admin_call(request: Request[Any, Any, Any], op: Any, status: int = 200) -> Response[bytes]:
    """Authenticate the admin, run ``op``; every refusal is an error answer and one log line."""
    admin_service: AdminService = request.app.state.admin_service
    admin: str | None = None
    try:
        admin = await admin_service.authenticate(request.headers.get("authorization"))
        result = await op(admin_service, admin)
    except (InvalidToken, InsufficientScope, InvalidClientMetadata, NotFound, Conflict, RecordUnreadable,
            StoreUnavailable) as exc:
        response, error, reason = _admin_refusal(exc)
        _log_admin_refusal(request, admin, response.status_code, error, reason)
        return response
    if result is None:
        return Response(b"", status_code=204, headers=NO_STORE)
    if isinstance(result, Response):
        return result
    return json_response(msgspec.to_builtins(result), status)


def _log_admin_refusal(request: Request[Any, Any, Any], admin: str | None, status: int, error: str | None,
                       reason: str) -> None:
    """``admin`` is the authenticated admin (None when authentication failed); ``client_id`` the
    client the call is about (its path parameter)."""
    unavailable = status == 503  # not a refusal: the store did not answer
    client = request.scope.get("client")  # after BROKER_TRUSTED_PROXIES, as for the rate limiter
    request.app.state.log.log(
        logging.ERROR if unavailable else logging.INFO, "admin.store_unavailable" if unavailable else "admin.rejected",
        admin=admin, client_id=request.path_params.get("client_id"), method=request.method,
        path=request.scope.get("path_template"), status=status, error=error, reason=reason,
        source=client[0] if client else None)


def _admin_refusal(exc: Exception) -> tuple[Response[bytes], str | None, str]:
    """The answer to an admin call that failed, its ``error`` code and the reason code for the log."""
    if isinstance(exc, InvalidToken):
        if exc.reason == "token_missing":  # RFC 6750 §3.1: no credentials → a bare challenge, no error code
            return bearer_error(401, None, ""), None, exc.reason
        return bearer_error(401, "invalid_token", "The access token is invalid or expired."), "invalid_token", exc.reason
    if isinstance(exc, InsufficientScope):
        return (bearer_error(403, "insufficient_scope", "The access token lacks the required scope.", exc.scope),
                "insufficient_scope", "insufficient_scope")
    if isinstance(exc, InvalidClientMetadata):
        return json_response({"error": exc.error, "error_description": exc.detail}, 400), exc.error, exc.reason
    if isinstance(exc, NotFound):
        return json_response({"error": "not_found", "error_description": "No such client or key."}, 404), "not_found", "not_found"
    if isinstance(exc, Conflict):
        body = {"error": "invalid_client_metadata", "error_description": exc.detail or _CONFLICT[exc.reason]}
        return json_response(body, 409), "invalid_client_metadata", exc.reason
    if isinstance(exc, RecordUnreadable):
        body = {"error": "invalid_client_metadata", "error_description": _UNREADABLE}
        return json_response(body, 409), "invalid_client_metadata", "record_unreadable"
    error = TemporarilyUnavailable("store_unavailable")  # StoreUnavailable
    return oauth_error(error), error.error, error.reason


_CONFLICT = {
    "exists": "client_id is already registered",
    "changed": "the client changed meanwhile (updated, or deleted and registered again): read it and retry",
}
_UNREADABLE = "the stored record cannot be read; delete the client and register it again"


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


@put("/admin/clients/{client_id:str}/record")
async def admin_import(request: Request[Any, Any, Any], client_id: FromPath[str]) -> Response[bytes]:
    """Restore a whole record as ``broker_admin.py export`` wrote it (``AdminService.import_record``):
    201 created, 200 updated or unchanged; ``?force=true`` replaces a newer record."""
    async def op(svc: AdminService, admin: str) -> Any:
        force = request.query_params.get("force", "false")
        if force not in ("true", "false"):
            raise InvalidClientMetadata("force_invalid", "force must be true or false")
        done = await svc.import_record(admin, client_id, await _json_body(request), force=force == "true")
        return json_response(msgspec.to_builtins(done), 201 if done.result == "created" else 200)

    return await _admin_call(request, op)


ROUTES = [
    openapi,
    token,
    revoke,
    introspect,
    token_op_other_methods,
    metadata,
    openid_configuration,
    authorize,
    jwks,
    admin_register,
    admin_list,
    admin_show,
    admin_update,
    admin_delete,
    admin_add_key,
    admin_remove_key,
    admin_import,
]


# -- admin API: trusted issuers (workload identity federation, app.service.trust_admin) -----------
# An issuer identifier is a URL (or spiffe://<trust domain>): it is named by the ``issuer`` query
# parameter, never a path segment (an encoded "/" in a path is decoded or refused by proxies).


async def _trust_call(request: Request[Any, Any, Any], op: Any) -> Response[bytes]:
    """``_admin_call`` for the trusted-issuer routes: their 404 and unreadable record say "issuer"."""
    async def guarded(svc: AdminService, admin: str) -> Any:
        try:
            return await op(request.app.state.trust_admin, admin)
        except (IssuerNotFound, RecordUnreadable) as exc:
            found = isinstance(exc, IssuerNotFound)
            error, reason = ("not_found", "not_found") if found else ("invalid_client_metadata", "record_unreadable")
            _log_admin_refusal(request, admin, 404 if found else 409, error, reason)
            return json_response({"error": error, "error_description": "No such trusted issuer." if found else
                                  "the stored trusted issuer cannot be read; remove it and add it again"},
                                 404 if found else 409)

    return await _admin_call(request, guarded)


def _issuer_param(request: Request[Any, Any, Any], *, required: bool) -> str | None:
    given = request.query_params.getall("issuer", [])
    if len(given) > 1 or (required and not given):
        raise InvalidClientMetadata("issuer_param_invalid", "name one trusted issuer: ?issuer=<its issuer "
                                    "identifier, URL-encoded>")
    return given[0] if given else None


@get("/admin/trusted-issuers")
async def admin_trust_list_or_show(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Every trusted issuer; with ``?issuer=``, that one."""
    async def op(svc: TrustAdmin, admin: str) -> Any:
        issuer = _issuer_param(request, required=False)
        return {"trusted_issuers": await svc.list()} if issuer is None else await svc.get(issuer)

    return await _trust_call(request, op)


@put("/admin/trusted-issuers")
async def admin_trust_put(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Create (201) or replace (200) the trusted issuer the body names."""
    async def op(svc: TrustAdmin, admin: str) -> Any:
        done = await svc.put(admin, await _json_body(request))
        return json_response(msgspec.to_builtins(done), 201 if done.result == "created" else 200)

    return await _trust_call(request, op)


@delete("/admin/trusted-issuers", status_code=200)
async def admin_trust_remove(request: Request[Any, Any, Any]) -> Response[bytes]:
    async def op(svc: TrustAdmin, admin: str) -> Any:
        await svc.remove(admin, str(_issuer_param(request, required=True)))

    return await _trust_call(request, op)


ROUTES += [admin_trust_list_or_show, admin_trust_put, admin_trust_remove]
