"""The composition root: ``create_app`` builds every part once and wires them together.

Resources (Redis client, poller task) are opened in the lifespan and kept on ``app.state``.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from app import log as broker_log
from app.config import Settings
from app.metrics import Metrics
from app.keystore import SigningKeySet, ensure_signing_keys
from app.oauth import metadata as oauth_metadata
from app.oauth.errors import InvalidRequest, OAuthError, ServerError
from app.service.admin import AdminService, bootstrap_admin_record
from app.service.directory import ClientDirectory, JwksUriPolicy
from app.service.ratelimit import FailureLimiter
from app.service.signing_keys import SigningKeyReloader
from app.service.token import TokenService
from app.service.introspection import IntrospectionService
from app.service.revocation import RevocationService
from app.store.token_cache import RedisTokenStore
from app.store.ratelimit import RedisFailureCounter
from app.store.redis import RedisClientRegistry, RedisJwksUriCache, RedisReplayGuard, connect
from app.web.responses import json_response, oauth_error
from app.web.drain import Drain
from app.web.metrics import describe as describe_metrics
from app.web.metrics import http_metrics_middleware
from app.web.openapi import openapi_document
from app.web.routes import ROUTES
from app.web.strict import strict_request_middleware


def create_app(settings: Settings, *, redis: Any = None, clock: Callable[[], float] = time.time, log_stream: Any = None) -> Litestar:
    broker_log.configure(settings.log_level, log_stream)
    log = broker_log.get_logger()
    metrics = Metrics()
    client = redis if redis is not None else connect(
        settings.redis_url, timeout=settings.redis_timeout, retries=settings.redis_retries,
        cluster=settings.redis_cluster, sentinels=settings.redis_sentinels, sentinel_master=settings.redis_sentinel_master,
    )
    store_opts = {"timeout": settings.redis_timeout, "retries": settings.redis_retries}
    registry = RedisClientRegistry(client, **store_opts, metrics=metrics)
    replay = RedisReplayGuard(client, **store_opts, metrics=metrics)
    describe_metrics(metrics)
    directory = ClientDirectory(
        registry, poll_interval=settings.registry_poll_interval, log=log, clock=clock, metrics=metrics,
        jwks_cache=RedisJwksUriCache(client, **store_opts), jwks_policy=JwksUriPolicy(
            allow_http_loopback=settings.jwks_uri_allow_http_loopback, cache_ttl=settings.jwks_uri_cache_ttl,
            refetch_cooldown=settings.jwks_uri_refetch_cooldown, timeout=settings.jwks_uri_timeout),
    )

    keys: dict[str, SigningKeySet] = {"current": ensure_signing_keys(settings.keys_dir, settings.signing_alg)}
    # Rotation (scripts/rotate_signing_key.py) rewrites the shared folder; each replica re-reads it.
    key_reloader = SigningKeyReloader(settings.keys_dir, keys, log=log, metrics=metrics)
    drain = Drain(settings.shutdown_drain, log)

    def signer() -> Any:
        return keys["current"].signer

    def verification_keys() -> Any:
        return keys["current"].verification_keys

    def jwks() -> bytes:
        import msgspec

        return msgspec.json.encode(keys["current"].jwks)

    limiter = FailureLimiter(RedisFailureCounter(client, **store_opts), limit=settings.ratelimit_failures,
                             window=settings.ratelimit_window, mode=settings.ratelimit_mode, log=log)
    tokens = RedisTokenStore(client, **store_opts, metrics=metrics)
    token_service = TokenService(settings, directory=directory, replay=replay, signer=signer, log=log, clock=clock,
                                 limiter=limiter, tokens=tokens, metrics=metrics)
    # RFC 7009 / RFC 7662: the same client authentication (and jti consumption) as /token.
    revocation_service = RevocationService(settings, authenticator=token_service.authenticator, cache=token_service.cache,
                                           verification_keys=verification_keys, log=log, clock=clock)
    introspection_service = IntrospectionService(settings, authenticator=token_service.authenticator, directory=directory,
                                                 tokens=tokens, verification_keys=verification_keys, log=log, clock=clock)
    admin_service = AdminService(
        settings, registry=registry, directory=directory, verification_keys=verification_keys, log=log, clock=clock,
        tokens=tokens,
    )
    @functools.lru_cache(maxsize=8)
    def _metadata_for(signing_algs: tuple[str, ...]) -> bytes:
        return oauth_metadata.encode(oauth_metadata.server_metadata(settings, signing_algs=list(signing_algs)))

    def metadata() -> bytes:
        """RFC 8414 document; follows the published keys' algorithms across rotations."""
        return _metadata_for(tuple(sorted({k.alg for k in keys["current"].verification_keys.values()})))

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        admin = bootstrap_admin_record(settings, log, int(clock()))
        existing = await registry.get(admin.client_id)
        if existing is None or existing.jwks != admin.jwks or existing.audiences != admin.audiences:
            if existing is not None:  # a new registration version: the token cache keys on it
                admin = msgspec.structs.replace(admin, version=existing.version + 1)
            await registry.put(admin)
        if settings.clients_file:
            await admin_service.load_clients_file(settings.clients_file)
        await directory.refresh()
        # Everything built at start (keys, clients, app) is long-lived: keep it out of the cyclic
        # GC's generations so collections stay short on the hot path.
        gc.collect()
        gc.freeze()
        gc.set_threshold(10_000, 50, 50)
        poller = asyncio.create_task(directory.run())
        key_poller = asyncio.create_task(key_reloader.run())
        drain.install()
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
            key_poller.cancel()
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
        middleware=[strict_request_middleware, http_metrics_middleware(metrics)],
        logging_config=None,  # no text handlers: served processes log JSON only (app.log.uvicorn_log_config)
        request_max_body_size=settings.body_max,
        exception_handlers={OAuthError: oauth, HTTPException: http_error, Exception: unexpected},
        state=State(
            {
                "settings": settings,
                "log": log,
                "token_service": token_service,
                "revocation_service": revocation_service,
                "introspection_service": introspection_service,
                "admin_service": admin_service,
                "health": registry,
                "registry": registry,
                "metrics": metrics,
                "key_reloader": key_reloader,
                "drain": drain,
                "directory": directory,
                "signer": signer,
                "jwks": jwks,
                "metadata": metadata,
                "openapi": msgspec.json.encode(openapi_document(settings)),
            }
        ),
        openapi_config=None,
        debug=False,
    )
