"""The per-request HTTP metrics middleware and the token endpoint's outcome counters.

The metrics themselves (names, labels, help) are declared in ``app.metrics``. ``endpoint`` is the
route template, never the raw path, so label values stay bounded; ``reason`` is the ``reason``
field of the ``token.rejected`` log event. The hot path cost is two ``perf_counter`` calls, one
counter increment and one histogram bisect (with several workers, also three slice assignments
into the worker's mmapped metrics file: ``app.metrics_files``).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from app.metrics import HTTP_REQUEST_SECONDS, HTTP_REQUESTS, REPLAYS_REJECTED, TOKEN_REJECTIONS, TOKENS_ISSUED, Metrics


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    if status < 500:
        return "rejected"
    return "error"


_OUTCOMES = {status: _outcome(status) for status in range(100, 600)}


def http_metrics_middleware(metrics: Metrics) -> Any:
    """A pure ASGI middleware factory for Litestar's ``middleware=[...]`` (runs after routing)."""

    def factory(app: Any) -> Any:
        async def middleware(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            status = 500
            start = perf_counter()

            async def send_wrapper(message: Any) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            finally:
                record_request(metrics, scope.get("path_template") or "unmatched", status, perf_counter() - start)

        return middleware

    return factory


def record_request(metrics: Metrics, endpoint: str, status: int, seconds: float) -> None:
    """One answered request (also called by ``app.web.direct`` for the token endpoint it serves)."""
    metrics.inc(HTTP_REQUESTS, endpoint=endpoint, status=str(status))
    metrics.observe(HTTP_REQUEST_SECONDS, seconds, endpoint=endpoint, outcome=_OUTCOMES.get(status, "error"))


def record_token_outcome(metrics: Metrics, error: Any) -> None:
    """Called by the token route: ``error`` is the OAuthError raised, or None when issued."""
    if error is None:
        metrics.inc(TOKENS_ISSUED)
        return
    metrics.inc(TOKEN_REJECTIONS, error=error.error, reason=error.reason)
    if error.reason == "jti_replayed":
        metrics.inc(REPLAYS_REJECTED)
