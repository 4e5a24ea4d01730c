"""The outermost layer of each listener: the request id, the in-flight count, the access log.

``request_context`` wraps a Litestar app's whole ASGI handler (its router and exception handling,
``create_app``), so it sees every HTTP answer of the app, the 404/405 of routing and the error
handlers' answers included. Per request it:

- makes the request id (``app.log.new_request_id``: 24 hex digits from the OS's random source)
  and sets it in ``app.log.REQUEST_ID``, so every line logged while the request is handled
  carries it as ``request_id``; the same value goes out as the ``X-Request-Id`` response header.
  An ``X-Request-Id`` sent by the caller, or by a proxy, is ignored: the id is also the value of
  the jti's replay record (``app.store.token_cache``), where a chosen id would make a replayed
  assertion look like a retry of the first request, and a caller-chosen id in the logs could
  be made to look like another request's;
- counts the request as in flight (``InFlight``: the ``broker.stopping`` line reports it);
- writes out the log lines buffered for it (``app.log.flush_request_lines``) when its answer
  starts, so they are out before the answer is, and again when it ends (under the HTTP server,
  in one write for the loop pass's answers: ``app.web.server._AnswerWriter``);
- with ``BROKER_ACCESS_LOG`` on (or a sample rate), writes one ``http.access`` line once the
  answer is sent: method, the route template as path (the raw path when no route matched; never
  the query string), status, duration, source address, user agent.

With the access log off the cost is one ``os.urandom``, one ``ContextVar.set``, one closure for
``send`` and one header appended to the response's header list.
"""

from __future__ import annotations

from random import random
from time import perf_counter
from typing import Any

from app.log import REQUEST_ID, flush_request_lines, new_request_id

#: Bytes of the User-Agent header an access line keeps.
USER_AGENT_MAX = 100


class InFlight:
    """Requests of one listener being handled in this process."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0


def request_context(app: Any, *, log: Any, access_sample: float, in_flight: InFlight) -> Any:
    """``app`` wrapped: request id, in-flight count, and an access line for ``access_sample`` of
    the requests (0: none, 1: all)."""

    async def handle(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        request_id = new_request_id()
        # Not reset at the end: the request's task ends with it, and uvicorn's own line about an
        # exception that escaped the app still carries the id.
        REQUEST_ID.set(request_id)
        header = (b"x-request-id", request_id.encode())
        status = 500

        async def send_with_id(message: Any) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                flush_request_lines()
                status = message["status"]
                headers = message.get("headers")
                if type(headers) is list:  # Litestar and the token route build a new list per answer
                    headers.append(header)
                else:
                    message["headers"] = [*(headers or ()), header]
            await send(message)

        start = perf_counter() if access_sample else 0.0
        in_flight.count += 1
        try:
            await app(scope, receive, send_with_id)
        finally:
            in_flight.count -= 1
            if access_sample and (access_sample >= 1.0 or random() < access_sample):
                _access_line(log, scope, status, perf_counter() - start)
            flush_request_lines()

    return handle


def _access_line(log: Any, scope: Any, status: int, seconds: float) -> None:
    client = scope.get("client")
    user_agent = None
    for name, value in scope["headers"]:
        if name == b"user-agent":
            user_agent = value[:USER_AGENT_MAX].decode("latin-1")
            break
    log.info("http.access", method=scope["method"], path=scope.get("path_template") or scope["path"],
             status=status, duration_ms=round(seconds * 1000, 3), source=client[0] if client else None,
             user_agent=user_agent)
