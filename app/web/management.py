"""The management listener's app: ``GET /metrics``, ``/healthz``, ``/readyz`` and nothing else.

These paths are not on the public listener at all. ``/metrics`` counts ``/token`` rejections by
reason: anyone who can read it can send a forged assertion and learn from the counters whether a
client_id exists (``signature_invalid`` vs ``client_unknown``), is disabled, has a given kid, or
whether an assertion was already spent. ``/readyz`` names the registry's and Redis's state. So
they are served on their own socket (``BROKER_MANAGEMENT_HOST``/``_PORT``, loopback by default,
``app/web/listeners.py``) that a load balancer's health check and a Prometheus reach on an
internal network; no path rule in front of the public port has to hide them.

The app shares the public app's ``State`` (the same metrics, drain flag, registry watch, signing
keys) and runs no lifespan of its own: the public app's lifespan starts and stops everything.
"""

from __future__ import annotations

from typing import Any

from litestar import Litestar, Request, Response, get
from litestar.datastructures import State

from app.metrics import Metrics
from app.store.base import StoreUnavailable
from app.web.metrics import http_metrics_middleware
from app.web.responses import NO_STORE, json_response
from app.web.strict import strict_request_middleware


@get("/metrics")
async def metrics(request: Request[Any, Any, Any]) -> Response[bytes]:
    """Prometheus text exposition format 0.0.4: with several workers, all of them added up, whichever
    worker answers (``app.metrics``)."""
    return Response(request.app.state.metrics.render(), media_type="text/plain; version=0.0.4",
                    headers=NO_STORE)


@get("/healthz")
async def healthz() -> Response[bytes]:
    return json_response({"status": "ok"})


@get("/readyz")
async def readyz(request: Request[Any, Any, Any]) -> Response[bytes]:
    if request.app.state.drain.draining:  # SIGTERM received: leave the load balancer's rotation
        return json_response({"status": "draining"}, 503)
    try:
        await request.app.state.health.ping()
    except StoreUnavailable:
        return json_response({"status": "not ready", "redis": "unreachable"}, 503)
    watch = request.app.state.registry_watch
    if watch.lost:  # Redis answers, but the registry is gone (or not created yet): docs/operations.md
        return json_response({"status": "not ready", "redis": "ok", "registry": watch.status.state}, 503)
    return json_response({"status": "ready", "redis": "ok", "registry": "ok", "signing_kid": request.app.state.signer().kid})


def management_app(state: State, metrics_registry: Metrics, *, exception_handlers: dict[Any, Any]) -> Litestar:
    """The management listener's ASGI app over ``state`` (the public app's), with the same
    canonical-path rule, request metrics and error bodies as the public app."""
    return Litestar(
        route_handlers=[metrics, healthz, readyz],
        middleware=[strict_request_middleware, http_metrics_middleware(metrics_registry)],
        logging_config=None,
        exception_handlers=exception_handlers,
        state=state,
        openapi_config=None,
        debug=False,
    )
