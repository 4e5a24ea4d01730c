"""Prometheus exposition at ``/metrics`` and the per-request HTTP metrics middleware.

Metric names (labels in braces) — label values are the same codes the logs use:

- ``broker_http_requests_total{endpoint,status}`` and
  ``broker_http_request_duration_seconds{endpoint,outcome}`` (outcome: ok, rejected,
  unavailable, error) — every routed request; ``endpoint`` is the route template, never the raw
  path, so label values stay bounded.
- ``broker_tokens_issued_total``; ``broker_token_rejections_total{error,reason}`` (``reason`` is
  the ``reason`` field of ``token.rejected`` logs); ``broker_replays_rejected_total`` (the
  ``replay.rejected`` log event).
- ``broker_redis_errors_total{op,error}`` and ``broker_redis_duration_seconds{op}`` (stores).
- ``broker_signing_keys{state}`` and ``broker_signing_key_info{kid,state}`` (key rotation).

The hot path cost is two ``perf_counter`` calls, one counter increment and one histogram bisect.
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from app.metrics import Metrics

REQUESTS = "broker_http_requests_total"
REQUEST_SECONDS = "broker_http_request_duration_seconds"
TOKENS_ISSUED = "broker_tokens_issued_total"
TOKEN_REJECTIONS = "broker_token_rejections_total"
REPLAYS = "broker_replays_rejected_total"
REDIS_ERRORS = "broker_redis_errors_total"
REDIS_SECONDS = "broker_redis_duration_seconds"
SIGNING_KEYS = "broker_signing_keys"
SIGNING_KEY_INFO = "broker_signing_key_info"


def describe(metrics: Metrics) -> None:
    metrics.describe(REQUESTS, "HTTP requests by route template and status code.")
    metrics.describe(REQUEST_SECONDS, "HTTP request latency by route template and outcome.")
    metrics.describe(TOKENS_ISSUED, "Access tokens issued.")
    metrics.describe(TOKEN_REJECTIONS, "Token requests refused, by RFC 6749 error and log reason code.")
    metrics.describe(REPLAYS, "Client assertions refused because their jti was already used.")
    metrics.describe(REDIS_ERRORS, "Redis calls that failed (timeout, refused, error reply), by store.")
    metrics.describe(REDIS_SECONDS, "Redis call latency by store.")
    metrics.describe(SIGNING_KEYS, "Signing keys in the keys folder, by rotation state.")
    metrics.describe(SIGNING_KEY_INFO, "1 for each signing key (kid) and its rotation state.")
    metrics.histogram(REQUEST_SECONDS)
    metrics.histogram(REDIS_SECONDS)


def outcome(status: int) -> str:
    if status < 400:
        return "ok"
    if status == 503:
        return "unavailable"
    if status < 500:
        return "rejected"
    return "error"


_OUTCOMES = {status: outcome(status) for status in range(100, 600)}


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
                endpoint = scope.get("path_template") or "unmatched"
                metrics.inc(REQUESTS, endpoint=endpoint, status=str(status))
                metrics.observe(REQUEST_SECONDS, perf_counter() - start, endpoint=endpoint,
                                outcome=_OUTCOMES.get(status, "error"))

        return middleware

    return factory


def record_token_outcome(metrics: Metrics, error: Any) -> None:
    """Called by the token route: ``error`` is the OAuthError raised, or None when issued."""
    if error is None:
        metrics.inc(TOKENS_ISSUED)
        return
    metrics.inc(TOKEN_REJECTIONS, error=error.error, reason=error.reason)
    if error.reason == "jti_replayed":
        metrics.inc(REPLAYS)
