"""The composition root: ``create_app`` builds every part once and wires them together.

Resources (Redis client, poller task) are opened in the lifespan and kept on ``app.state``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from app import logging as broker_logging
from app.config import Settings
from app.metrics import Metrics
from app.keystore import SigningKeySet, ensure_signing_keys
from app.oauth import metadata as oauth_metadata
from app.oauth.errors import InvalidRequest, OAuthError, ServerError
from app.service.admin import AdminService, bootstrap_admin_record
from app.service.directory import ClientDirectory
from app.service.token import TokenService
from app.store.redis import RedisClientRegistry, RedisReplayGuard, connect
from app.web.responses import json_response, oauth_error
from app.web.routes import ROUTES


def create_app(settings: Settings, *, redis: Any = None, clock: Callable[[], float] = time.time, log_stream: Any = None) -> Litestar:
    broker_logging.configure(settings.log_level, log_stream)
    log = broker_logging.get_logger()
    metrics = Metrics()
    client = redis if redis is not None else connect(settings.redis_url, timeout=settings.redis_timeout, retries=settings.redis_retries)
    store_opts = {"timeout": settings.redis_timeout, "retries": settings.redis_retries}
    registry = RedisClientRegistry(client, **store_opts)
    replay = RedisReplayGuard(client, **store_opts)
    directory = ClientDirectory(registry, poll_interval=settings.registry_poll_interval, log=log)

    keys: dict[str, SigningKeySet] = {"current": ensure_signing_keys(settings.keys_dir, settings.signing_alg)}

    def signer() -> Any:
        return keys["current"].signer

    def verification_keys() -> Any:
        return keys["current"].verification_keys

    def jwks() -> bytes:
        import msgspec

        return msgspec.json.encode(keys["current"].jwks)

    token_service = TokenService(settings, directory=directory, replay=replay, signer=signer, log=log, clock=clock)
    admin_service = AdminService(
        settings, registry=registry, directory=directory, verification_keys=verification_keys, log=log, clock=clock
    )
    signing_algs = sorted({k.alg for k in keys["current"].verification_keys.values()})

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        admin = bootstrap_admin_record(settings, log, int(clock()))
        existing = await registry.get(admin.client_id)
        if existing is None or existing.jwks != admin.jwks or existing.audiences != admin.audiences:
            await registry.put(admin)
        await directory.refresh()
        poller = asyncio.create_task(directory.run())
        log.info(
            "broker.started",
            issuer=settings.issuer,
            store="embedded (fakeredis, single process only)" if settings.embedded else "redis",
            signing_kid=signer().kid,
        )
        if settings.embedded:
            log.warning("broker.embedded_store", note="state lives in this process only: do not run several replicas")
        try:
            yield
        finally:
            poller.cancel()
            if redis is None:
                await client.aclose()

    def http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
        if exc.status_code == 404:
            return json_response({"error": "not_found"}, 404)
        if exc.status_code == 405:
            return json_response({"error": "invalid_request", "error_description": "Method not allowed."}, 405)
        if exc.status_code == 413:
            return json_response({"error": "invalid_request", "error_description": "The request body is too large."}, 413)
        return oauth_error(InvalidRequest("http_error"))

    def unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
        log.error("request.unexpected_error", path=request.url.path, error=type(exc).__name__)
        return oauth_error(ServerError("unexpected"))

    def oauth(request: Request[Any, Any, Any], exc: OAuthError) -> Response[bytes]:
        return oauth_error(exc)

    return Litestar(
        route_handlers=ROUTES,
        lifespan=[lifespan],
        request_max_body_size=settings.body_max,
        exception_handlers={OAuthError: oauth, HTTPException: http_error, Exception: unexpected},
        state=State(
            {
                "settings": settings,
                "log": log,
                "token_service": token_service,
                "admin_service": admin_service,
                "health": registry,
                "registry": registry,
                "metrics": metrics,
                "directory": directory,
                "signer": signer,
                "jwks": jwks,
                "metadata": oauth_metadata.encode(oauth_metadata.server_metadata(settings, signing_algs=signing_algs)),
            }
        ),
        openapi_config=None,
        debug=False,
    )
