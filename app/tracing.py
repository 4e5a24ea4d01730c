"""Opt-in OpenTelemetry spans (``BROKER_TRACING``): ``POST /token``, Redis calls, jwks_uri fetches.

Off (the default), nothing of OpenTelemetry is imported and every hook costs one attribute check:
the hooks elsewhere are one line each, ``if tracing.on: ...`` (or the ``jwks_fetch_span``
decorator, off the hot path). ``middleware`` is called by the composition root
(``app.web.app.create_app``): with tracing on it starts the tracer once per process and returns
the middleware that opens the ``POST /token`` span; off it returns nothing.

Spans:

- ``POST /token`` (server): ``http.response.status_code``, ``broker.token.outcome`` (``issued``,
  ``rejected``, ``unavailable``, ``error``), ``oauth.error`` (the error code answered),
  ``oauth.client_id`` once the assertion names one, ``broker.token.cache`` (``hit``, ``wait`` or
  ``mint``) and ``broker.token.cache_hit`` when a token was served;
- ``redis <op>`` (client), one per store call (``app.store.redis.RedisStore._run``, where the
  calls are timed for the metrics), ``broker.redis.op`` as in ``broker_redis_*``;
- ``jwks_uri fetch`` (client): ``url.full`` without its query, ``broker.jwks.outcome``.

Assertions, tokens and keys are never span attributes. ``console`` writes one JSON span per line
to stderr (stdout is the log stream); ``otlp`` exports with the OTLP/HTTP exporter, configured by
the standard ``OTEL_EXPORTER_OTLP_*`` variables. The tracer provider is the broker's own (not the
global one).
"""

from __future__ import annotations

import functools
import importlib.util
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from app.config import ConfigError, Settings
from app.oauth.clients import CLIENT_ID_RE

#: True once ``start`` has set up a tracer in this process: the one check every hook makes.
on = False
_tracer: Any = None
_provider: Any = None
_trace: Any = None  # the opentelemetry.trace module, once imported

_OUTCOMES = {200: "issued", 503: "unavailable"}


def missing_packages(settings: Settings) -> str | None:
    """Why ``settings.tracing`` cannot work in this installation (checked without importing)."""
    if settings.tracing == "off":
        return None
    wanted = ["opentelemetry.sdk"] + (["opentelemetry.exporter.otlp.proto.http"] if settings.tracing == "otlp" else [])
    try:
        if all(importlib.util.find_spec(name) is not None for name in wanted):
            return None
    except ModuleNotFoundError:
        pass
    return (f"BROKER_TRACING={settings.tracing} needs the OpenTelemetry packages: pip install 'token-broker[otel]' "
            "(or set BROKER_TRACING=off)")


def middleware(settings: Settings) -> list[Callable[[Any], Any]]:
    """The composition root's hook: [] when tracing is off, else the ``POST /token`` span middleware."""
    if settings.tracing == "off":
        return []
    if not on:
        problem = missing_packages(settings)
        if problem:
            raise ConfigError(problem)
        start(_exporter(settings.tracing))
    return [_token_span_middleware]


def start(exporter: Any) -> None:
    """Trace into ``exporter`` (an OpenTelemetry ``SpanExporter``) from now on, in this process."""
    global on, _tracer, _provider, _trace
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    stop()
    _provider = TracerProvider(resource=Resource.create({"service.name": "token-broker"}))
    batch = type(exporter).__name__.startswith("OTLP")  # a network exporter: off the request path
    _provider.add_span_processor(BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    _tracer = _provider.get_tracer("token-broker")
    _trace = trace
    on = True


def stop() -> None:
    """Flush and stop tracing (tests, and a process that ends)."""
    global on, _tracer, _provider
    on = False
    if _provider is not None:
        _provider.shutdown()
    _tracer = _provider = None


def _exporter(mode: str) -> Any:
    if mode == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter(out=sys.stderr, formatter=lambda span: span.to_json(indent=None) + "\n")
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


# -- the hooks ------------------------------------------------------------------------------------


def client(client_id: str | None) -> None:
    """The client the request's assertion names (``app.service.client_auth``): set only when it is
    a valid client_id, since the assertion is not verified yet (anything else is the caller's text)."""
    if client_id is not None and CLIENT_ID_RE.fullmatch(client_id):
        _trace.get_current_span().set_attribute("oauth.client_id", client_id)


def cache(how: str) -> None:
    """How the token served was found (``app.service.token``): ``hit``, ``wait`` or ``mint``."""
    span = _trace.get_current_span()
    span.set_attribute("broker.token.cache", how)
    span.set_attribute("broker.token.cache_hit", how == "hit")


async def redis_call(call: Awaitable[Any], op: str) -> Any:
    """One store call (``RedisStore._run``) inside a ``redis <op>`` span."""
    kind = _trace.SpanKind.CLIENT
    with _tracer.start_as_current_span(f"redis {op}", kind=kind, attributes={"db.system.name": "redis",
                                                                             "broker.redis.op": op}):
        return await call


def jwks_fetch_span(fetch: Callable[..., Awaitable[bytes]]) -> Callable[..., Awaitable[bytes]]:
    """Decorates ``fetch_jwks(url, ...)``: a ``jwks_uri fetch`` span when tracing is on."""

    @functools.wraps(fetch)
    async def traced(url: str, **kwargs: Any) -> bytes:
        if not on:
            return await fetch(url, **kwargs)
        from app.log import without_query

        attributes = {"url.full": without_query(url) or ""}
        with _tracer.start_as_current_span("jwks_uri fetch", kind=_trace.SpanKind.CLIENT, attributes=attributes) as span:
            try:
                body = await fetch(url, **kwargs)
            except Exception as exc:
                span.set_attribute("broker.jwks.outcome", str(getattr(exc, "reason", type(exc).__name__)))
                raise
            span.set_attribute("broker.jwks.outcome", "ok")
            return body

    return traced


def _token_span_middleware(app: Any) -> Any:
    """The ``POST /token`` span around the route (Litestar middleware: runs after routing)."""

    async def middleware(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"] == "/token" and scope["method"] == "POST":
            with _tracer.start_as_current_span("POST /token", kind=_trace.SpanKind.SERVER,
                                               attributes={"http.request.method": "POST", "url.path": "/token"}) as span:
                answer = _Answer(send)
                try:
                    await app(scope, receive, answer.send)
                finally:
                    _answered(span, answer.status, bytes(answer.body))
        else:
            await app(scope, receive, send)

    return middleware


class _Answer:
    """What the route answered: the status, and the first bytes of an error body (its ``error``)."""

    def __init__(self, send: Any) -> None:
        self._send = send
        self.status = 500
        self.body = bytearray()

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        elif self.status >= 400 and len(self.body) < 4096:
            self.body += message.get("body", b"")
        await self._send(message)


def _answered(span: Any, status: int, body: bytes) -> None:
    span.set_attribute("http.response.status_code", status)
    span.set_attribute("broker.token.outcome", _OUTCOMES.get(status, "rejected" if status < 500 else "error"))
    if status >= 400:
        try:
            span.set_attribute("oauth.error", str(json.loads(body)["error"]))
        except (ValueError, KeyError, TypeError):
            pass
    if status >= 500 and status != 503:
        span.set_status(_trace.Status(_trace.StatusCode.ERROR))
