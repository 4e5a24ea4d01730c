"""``POST /token`` answered by the HTTP server's protocol itself, without the ASGI layers.

The token endpoint is the hot path. Through ASGI a request builds a scope, a request/response
cycle, an ``asyncio.Event``, three message dicts and four wrapper frames (request id, routing,
strict path, metrics), and uvicorn validates and re-encodes every header it sends; together that is
about a tenth of a request's CPU on a small VM (docs/performance.md). For the requests that need
none of it, ``app.web.server`` hands the request to ``DirectToken.answer`` once its body is
complete and writes the bytes it returns. The answer is the one the ASGI route gives, byte for
byte apart from the date and the request id (``tests/test_direct_token.py`` compares them):

- the same service call (``TokenService.token``), the same errors and bodies, the same
  ``token.*`` counters and ``http_requests_total`` / ``http_request_seconds`` for ``/token``;
- the same request id (``X-Request-Id``, ``request_id`` in every log line of the request), the
  same in-flight count (the drain's ``broker.stopping`` line), the same log flushing before the
  answer (``app.web.server._AnswerWriter``).

Which requests take it is decided by the server (``BoundedHttpToolsProtocol._direct_request``):
``POST`` with the request target exactly ``/token``, HTTP/1.1, exactly one ``Content-Length`` (at
most ``BROKER_BODY_MAX``) and no ``Transfer-Encoding``, at most one ``Content-Type``, no
``Expect``, no upgrade, nothing pipelined before it, under the connection cap. Every other request,
and every request when tracing or the access log is on (``direct_token`` returns None), goes
through ASGI as before, where the strict middleware and the route answer it. Behind trusted
proxies (``BROKER_TRUSTED_PROXIES``) the server gives the same source address as uvicorn's
proxy-headers layer, from the same table (``BoundedHttpToolsProtocol._source``).
"""

from __future__ import annotations

from time import perf_counter
from typing import Any

from app.config import Settings
from app.log import REQUEST_ID, flush_request_lines, new_request_id
from app.metrics import Metrics
from app.oauth.errors import OAuthError, ServerError
from app.service.client_auth import EndpointRequest
from app.service.token import TokenService
from app.web.access import InFlight
from app.web.metrics import record_request, record_token_outcome

_PATH = "/token"
_JSON_HEAD = b"content-type: application/json\r\ncache-control: no-store\r\npragma: no-cache\r\ncontent-length: "


def direct_token(settings: Settings, *, service: TokenService, metrics: Metrics, log: Any,
                 in_flight: InFlight) -> DirectToken | None:
    """The composition root's hook: None when a layer the direct path does not have is on
    (tracing spans, access lines)."""
    if settings.tracing != "off" or settings.access_log_sample:
        return None
    return DirectToken(service=service, metrics=metrics, log=log, in_flight=in_flight, body_max=settings.body_max)


class DirectToken:
    """The token endpoint for ``app.web.server``: a request's parts in, the answer's status,
    header lines and body out."""

    __slots__ = ("_service", "_metrics", "_log", "_in_flight", "body_max")

    #: The request target the server compares (bytes, as it arrives).
    path = b"/token"

    def __init__(self, *, service: TokenService, metrics: Metrics, log: Any, in_flight: InFlight,
                 body_max: int) -> None:
        self._service = service
        self._metrics = metrics
        self._log = log
        self._in_flight = in_flight
        self.body_max = body_max

    async def answer(self, body: bytes, content_type: str | None, has_authorization: bool, source: str | None,
                     dpop: tuple[str, ...]) -> tuple[int, bytes, bytes]:
        """(status, header lines, body) of the answer; the header lines end with ``X-Request-Id``'s
        and each with CRLF. Never raises an ``Exception``: an unexpected one is a 500 ``server_error``."""
        request_id = new_request_id()
        REQUEST_ID.set(request_id)  # this request's task has a context of its own
        metrics = self._metrics
        self._in_flight.count += 1
        start = perf_counter()
        try:
            try:
                result = await self._service.token(EndpointRequest(body, content_type, has_authorization, request_id,
                                                                   source, dpop))
            except OAuthError as exc:
                record_token_outcome(metrics, exc)
                status, head, result = _error(exc)
            except Exception as exc:  # never a traceback on the token endpoint (as the ASGI route)
                self._log.error("token.unexpected_error", error=type(exc).__name__)
                error = ServerError("unexpected")
                record_token_outcome(metrics, error)
                status, head, result = _error(error)
            else:
                record_token_outcome(metrics, None)
                status = 200
                head = _JSON_HEAD + str(len(result)).encode() + b"\r\n"
                if dpop and (nonce := self._service.dpop_nonce()) is not None:  # RFC 9449 §8
                    head += b"dpop-nonce: " + nonce.encode("ascii") + b"\r\n"
            flush_request_lines()  # (through the server's pass flusher: out before the answer)
            record_request(metrics, _PATH, status, perf_counter() - start)
            return status, head + b"x-request-id: " + request_id.encode() + b"\r\n", result
        finally:
            self._in_flight.count -= 1


def _error(exc: OAuthError) -> tuple[int, bytes, bytes]:
    body = exc.body()
    head = _JSON_HEAD + str(len(body)).encode() + b"\r\n"
    for name, value in exc.headers.items():
        head += name.lower().encode("latin-1") + b": " + value.encode("latin-1") + b"\r\n"
    return exc.status_code, head, body
