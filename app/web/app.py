"""The composition root: ``create_app`` builds every part once and hands each its collaborators.

No service builds its own collaborators: the one store object that records jtis and holds the
token cache, the one authenticator, token cache, signing keys and rate limiter are made here and
passed in. Resources (Redis client, poller tasks) are opened in the lifespan and kept on
``app.state``. Each listener's app is wrapped whole by ``app.web.access.request_context``
(request id, in-flight count, access log), outside Litestar's router.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import msgspec
from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.exceptions import HTTPException

from app import log as broker_log
from app import tracing
from app.config import Settings
from app.keystore import ensure_signing_keys
from app.metrics import Metrics
from app.oauth import metadata as oauth_metadata
from app.oauth.errors import InvalidRequest, OAuthError, ServerError
from app.service.admin import AdminService
from app.service.client_auth import ClientAuthenticator
from app.service.clients_file import ClientsFile
from app.service.directory import ClientDirectory, jwks_uri_policy
from app.service.dpop import ProofChecker
from app.service.federation import FederationService, federation_service
from app.service.introspection import IntrospectionService
from app.service.quota import CountedReplayGuard
from app.service.ratelimit import FailureLimiter
from app.service.redis_memory import RedisMemoryMonitor
from app.service.registry_state import RegistryRecord, RegistryWatch, open_registry, warn_without_persistence
from app.service.revocation import RevocationService
from app.service.signing_keys import SigningKeyReloader, SigningKeys
from app.service.token import TokenService
from app.service.token_cache import TokenCache
from app.service.trust_admin import TrustAdmin
from app.store.dpop import RedisNonceSecret
from app.store.memory import RedisMemoryProbe
from app.store.ratelimit import RedisFailureCounter
from app.store.redis import RedisClientRegistry, RedisJwksUriCache, connect
from app.store.token_cache import RedisTokenStore
from app.store.trust import RedisTrustStore
from app.web.access import InFlight, request_context
from app.web.direct import direct_token
from app.web.drain import Drain
from app.web.management import management_app
from app.web.metrics import http_metrics_middleware
from app.web.openapi import openapi_document
from app.web.responses import json_response, oauth_error
from app.web.routes import ROUTES, send_error, token
from app.web.strict import strict_request_middleware


def create_app(settings: Settings, *, redis: Any = None, clock: Callable[[], float] = time.time, log_stream: Any = None) -> Litestar:
    broker_log.configure(settings.log_level, log_stream)
    # Bound once: structlog's lazy proxy would rebuild the logger on every call (about half the
    # cost of a line: a token.issued or http.access line on every request).
    log = broker_log.get_logger().bind()
    metrics = Metrics()
    client = redis if redis is not None else connect(
        settings.redis_url, timeout=settings.redis_timeout, retries=settings.redis_retries,
        cluster=settings.redis_cluster, sentinels=settings.redis_sentinels, sentinel_master=settings.redis_sentinel_master,
    )
    state = _build(settings, client, log=log, clock=clock, metrics=metrics)
    in_flight = InFlight()
    state["drain"] = Drain(settings.shutdown_drain, log, in_flight=lambda: in_flight.count)
    # POST /token straight from the HTTP server's protocol (app.web.server, under ``serve``).
    state["direct_token"] = direct_token(settings, service=state["token_service"], metrics=metrics, log=log,
                                         in_flight=in_flight)
    handlers = {OAuthError: _oauth_error, HTTPException: _http_error, Exception: _unexpected_error}
    middleware = [strict_request_middleware, http_metrics_middleware(metrics), *tracing.middleware(settings)]
    app = Litestar(
        route_handlers=ROUTES,
        lifespan=[_lifespan(settings, state, log, close=client if redis is None else None)],
        middleware=middleware,
        logging_config=None,  # no text handlers: served processes log JSON only (app.log.uvicorn_log_config)
        request_max_body_size=settings.body_max,
        exception_handlers=handlers,
        state=State(state),
        openapi_config=None,
        debug=False,
    )
    # /metrics, /healthz, /readyz: the management listener's app, over this app's state.
    management = app.state.management_app = management_app(app.state, metrics, exception_handlers=handlers)
    # Litestar's whole handler (router + exception handling), so routing's 404/405 get the header
    # too, with POST /token routed first (token_first). No access lines for the management
    # listener: probes and scrapes every few seconds.
    app.asgi_handler = request_context(token_first(app.asgi_handler, middleware, log), log=log,
                                       access_sample=settings.access_log_sample, in_flight=in_flight)
    management.asgi_handler = request_context(management.asgi_handler, log=log, access_sample=0.0,
                                              in_flight=InFlight())
    return app


def token_first(handler: Any, middleware: list[Callable[[Any], Any]], log: Any) -> Any:
    """The app's ASGI handler with ``/token`` routed before Litestar's router.

    The token endpoint is the hot path and a plain ASGI handler (``app.web.routes.token``) that
    answers every error itself; Litestar's routing and its exception middleware cost ≈ 4% of a
    request there. A request whose decoded path is exactly ``/token`` (no ``root_path``) goes to
    the same handler through the same middleware as on Litestar's route, with the scope keys its
    router would set (``path_template``, ``path_params``): the strict middleware still refuses
    any other spelling of the path (``/%74oken``). Every other path, ``/token/`` included, goes to
    Litestar as before. An exception escaping the middleware is answered as Litestar's exception
    handler answers one (``request.unexpected_error`` logged, 500 ``server_error``)."""
    chain = token.fn
    for factory in reversed(middleware):
        chain = factory(chain)

    async def route(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/token" or scope.get("root_path"):
            await handler(scope, receive, send)
            return
        scope["path_template"] = "/token"
        scope["path_params"] = {}
        try:
            await chain(scope, receive, send)
        except Exception as exc:
            log.error("request.unexpected_error", path="/token", error=type(exc).__name__)
            with contextlib.suppress(Exception):  # the answer may have started: nothing more to send then
                await send_error(send, ServerError("unexpected"))

    return route


def start_summary(app: Litestar) -> dict[str, Any]:
    """The fields of the ``broker.started`` line (written once the public port listens: app.web.listeners)."""
    settings: Settings = app.state.settings
    return {
        "issuer": settings.issuer,
        "store": "embedded (fakeredis, single process only)" if settings.embedded else "redis",
        "signing_kid": app.state.signer().kid,
    }


def _build(settings: Settings, client: Any, *, log: Any, clock: Callable[[], float], metrics: Metrics) -> dict[str, Any]:
    """Every long-lived part, each built once, as the ``app.state`` the routes read."""
    store_opts = {"timeout": settings.redis_timeout, "retries": settings.redis_retries, "metrics": metrics}
    registry = RedisClientRegistry(client, **store_opts)
    # One object for both roles: the token endpoint's one script call and the plain jti record.
    tokens = RedisTokenStore(client, quota=settings.client_quota, quota_window=settings.client_quota_window, **store_opts)
    # The embedded store dies with the process: no record of its registry is kept (BROKER_REGISTRY_RECORD).
    record = None if settings.embedded else RegistryRecord.for_settings(settings)
    watch = RegistryWatch(registry, record, log=log, metrics=metrics)
    directory = ClientDirectory(
        registry, poll_interval=settings.registry_poll_interval, log=log, clock=clock, metrics=metrics, watch=watch,
        jwks_cache=RedisJwksUriCache(client, **store_opts), jwks_policy=jwks_uri_policy(settings))
    trust, federation = _federation(settings, client, store_opts, registry=registry, directory=directory, watch=watch,
                                    log=log, metrics=metrics, clock=clock)
    keys = SigningKeys(ensure_signing_keys(settings.keys_dir, settings.signing_alg))
    limiter = FailureLimiter(RedisFailureCounter(client, **store_opts), limit=settings.ratelimit_failures,
                             window=settings.ratelimit_window, mode=settings.ratelimit_mode, log=log)
    # RFC 7009 / RFC 7662 authenticate their callers exactly as /token does (and count toward the quota).
    replay = CountedReplayGuard(tokens) if settings.client_quota else tokens
    auth = ClientAuthenticator(settings, directory=directory, replay=replay, limiter=limiter, log=log, clock=clock,
                               federation=federation)
    cache = TokenCache(settings, store=tokens, metrics=metrics, log=log)
    admin = AdminService(settings, registry=registry, directory=directory, tokens=tokens,
                         verification_keys=keys.verification_keys, log=log, clock=clock)
    trust_admin = TrustAdmin(settings, store=trust, registry=registry, log=log)  # admin API and clients file
    admin.clients_file = ClientsFile(settings.clients_file, settings=settings, admin=admin, registry=registry, watch=watch,
                                     log=log, metrics=metrics, clock=clock, trust=trust_admin) if settings.clients_file else None
    return {
        "settings": settings,
        "log": log,
        "metrics": metrics,
        "token_service": TokenService(settings, authenticator=auth, tokens=tokens, cache=cache, signer=keys.signer,
                                      proofs=_proof_checker(settings, client, store_opts, log), log=log, clock=clock),
        "revocation_service": RevocationService(settings, authenticator=auth, cache=cache,
                                                verification_keys=keys.verification_keys, log=log),
        "introspection_service": IntrospectionService(settings, authenticator=auth, directory=directory, tokens=tokens,
                                                      verification_keys=keys.verification_keys, log=log),
        "admin_service": admin,
        "clients_file": admin.clients_file,
        "token_cache": cache,
        "health": registry,
        "registry": registry,
        "trust_store": trust,
        "trust_admin": trust_admin,
        "registry_record": record,
        "registry_watch": watch,
        "directory": directory,
        # Rotation (scripts/rotate_signing_key.py) rewrites the shared folder; each replica re-reads it.
        "key_reloader": SigningKeyReloader(settings.keys_dir, keys, log=log, metrics=metrics),
        # Not for the embedded store: its memory is this process's, with no maxmemory to reach.
        # No error metrics: a managed Redis that refuses INFO must not look like a failing store.
        "redis_memory": None if settings.embedded else RedisMemoryMonitor(RedisMemoryProbe(
            client, cluster=settings.redis_cluster, timeout=settings.redis_timeout, retries=0), metrics=metrics, log=log),
        "signer": keys.signer,
        "jwks": keys.jwks,
        "metadata": _metadata(settings, keys, openid=False),
        "openid_configuration": _metadata(settings, keys, openid=True),
        "openapi": msgspec.json.encode(openapi_document(settings)),
    }


def _federation(settings: Settings, client: Any, store_opts: dict[str, Any], *, registry: RedisClientRegistry,
                directory: ClientDirectory, watch: RegistryWatch, log: Any, metrics: Metrics,
                clock: Callable[[], float]) -> tuple[RedisTrustStore, FederationService]:
    """Workload identity federation: trusted issuers live in the registry (its marker, its epoch);
    their keys are fetched like jwks_uri clients' (the same SSRF guard, shared cache and settings)."""
    trust = RedisTrustStore(client, registry=registry, **store_opts)
    return trust, federation_service(settings, trust=trust, directory=directory, watch=watch, log=log, metrics=metrics,
                                     jwks_cache=RedisJwksUriCache(client, **store_opts), clock=clock)


def _proof_checker(settings: Settings, client: Any, store_opts: dict[str, Any], log: Any) -> ProofChecker:
    """The token endpoint's DPoP step, with the store of the nonce secret every replica shares."""
    return ProofChecker(settings, secrets_store=RedisNonceSecret(client, **store_opts), log=log)


def _metadata(settings: Settings, keys: SigningKeys, *, openid: bool) -> Callable[[], bytes]:
    """The RFC 8414 document (or its openid-configuration form), encoded once per set of published
    algorithms (it follows rotations)."""

    @functools.lru_cache(maxsize=8)
    def encoded(signing_algs: tuple[str, ...]) -> bytes:
        doc = oauth_metadata.server_metadata(settings, signing_algs=list(signing_algs))
        return oauth_metadata.encode(oauth_metadata.openid_configuration(doc, settings) if openid else doc)

    return lambda: encoded(keys.algs)


def _lifespan(settings: Settings, state: dict[str, Any], log: Any,
              close: Any) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    """Start: the admin client and clients file registered, clients loaded, pollers (the registry,
    the keys folder, the clients file, the Redis memory gauges) running.
    ``close`` is the Redis client this app opened itself (None when the caller passed one in)."""
    directory: ClientDirectory = state["directory"]

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        await _open_registry(settings, state, log)
        await state["token_service"].proofs.preload()  # the DPoP nonce secret, when nonces are on
        await directory.refresh()
        _freeze_startup_objects()
        poller = asyncio.create_task(directory.run())
        key_poller = asyncio.create_task(state["key_reloader"].run())
        memory = state["redis_memory"] and asyncio.create_task(state["redis_memory"].run())
        clients_file = state["clients_file"] and asyncio.create_task(state["clients_file"].run())
        state["drain"].install()
        if settings.embedded:
            log.warning("broker.embedded_store", note="state lives in this process only: do not run several replicas")
        try:
            yield
        finally:
            await _stop_tasks([t for t in (poller, key_poller, memory, clients_file) if t], log)
            if close is not None:
                await close.aclose()
            log.info("broker.stopped")

    return lifespan


#: Seconds the stop waits for the cancelled background tasks to end.
STOP_TASKS_WAIT = 5.0


#: Seconds between two cancellations of a background task that has not ended yet.
STOP_TASKS_RECANCEL = 0.1


async def _stop_tasks(tasks: list[asyncio.Task[Any]], log: Any) -> None:
    """Cancel the background tasks and wait until they have ended, before the Redis client closes:
    no store call of theirs is still in flight when its connection is closed, and none is left for
    the event loop's own shutdown (which cancels each remaining task once, then waits for ever).

    A task still running ``STOP_TASKS_RECANCEL`` after a cancellation is cancelled again (as
    anyio's cancel scopes do), so one that absorbed a cancellation (its own code or a library it
    calls catching ``CancelledError`` on the way) still ends. One that has not ended after
    ``STOP_TASKS_WAIT`` is logged (``broker.task_not_stopped``) and left behind."""
    loop = asyncio.get_running_loop()
    until = loop.time() + STOP_TASKS_WAIT
    pending = set(tasks)
    while pending and loop.time() < until:
        for task in pending:
            task.cancel()
        _done, pending = await asyncio.wait(pending, timeout=min(STOP_TASKS_RECANCEL, max(0.0, until - loop.time())))
    for task in pending:
        log.warning("broker.task_not_stopped", task=task.get_coro().__qualname__)


async def _open_registry(settings: Settings, state: dict[str, Any], log: Any) -> None:
    """Find (or, on a deployment's first start, create) the registry, then assert the start-up
    registrations. A lost registry gets no writes at all (they would hide the loss): the replica
    starts not ready and re-asserts them when the registry is restored (``RegistryWatch``)."""
    admin_service: AdminService = state["admin_service"]
    watch: RegistryWatch = state["registry_watch"]
    registry = state["registry"]
    if not settings.embedded:
        await warn_without_persistence(registry, log)
    status = await open_registry(registry, state["registry_record"], log=log)
    watch.on_restored = admin_service.start_registrations
    if status.state == "ok":
        await admin_service.start_registrations()
    watch.started(status)


def _freeze_startup_objects() -> None:
    # Everything built at start (keys, clients, app) is long-lived: keep it out of the cyclic
    # GC's generations so collections stay short on the hot path.
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 50, 50)


def _http_error(request: Request[Any, Any, Any], exc: HTTPException) -> Response[bytes]:
    if exc.status_code == 404:
        return json_response({"error": "not_found"}, 404)
    if exc.status_code == 405:
        return json_response({"error": "invalid_request", "error_description": "Method not allowed."}, 405)
    if exc.status_code == 413:
        return json_response({"error": "invalid_request", "error_description": "The request body is too large."}, 413)
    return oauth_error(InvalidRequest("http_error"))


def _unexpected_error(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    request.app.state.log.error("request.unexpected_error", path=request.url.path, error=type(exc).__name__)
    return oauth_error(ServerError("unexpected"))


def _oauth_error(request: Request[Any, Any, Any], exc: OAuthError) -> Response[bytes]:
    return oauth_error(exc)
