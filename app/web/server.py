"""The HTTP server: uvicorn's httptools protocol with bounded header sections and read deadlines.

httptools (llhttp) has no header size limit of its own, and its Python wrapper grows a header
value by concatenation, so one unfinished 100 MB header costs memory and seconds of event loop.
uvicorn's h11 protocol has a cap (``h11_max_incomplete_event_size``) but answers it with a 400 and
parses in pure Python on every request. This subclass keeps httptools and adds:

- a byte budget for each request line + header section (``BROKER_HTTP_HEADER_MAX``): the parser
  is never fed more than the budget; past it the answer is 431 and the connection closes;
- a deadline for the header section (from the connection's start, or from the read that began the
  next request on a kept-alive connection: ``BROKER_HTTP_HEADER_TIMEOUT``) and one for the declared
  body (from the read that ended the headers: ``BROKER_HTTP_BODY_TIMEOUT``); more bytes do not
  extend them. On expiry: 408 if a request had begun and nothing of its answer was sent, then
  close. One timer per process checks the deadlines, so a request costs no timer of its own (its
  deadline is a float, set only when a read leaves the request incomplete);
- parse errors answered with the broker's JSON ``invalid_request`` body instead of uvicorn's text;
- an answer's status line + headers and its body in one ``write`` (uvicorn writes each as it
  comes: two ``send`` system calls per answer, ≈ 3-5% of a token request's CPU on small VMs):
  ``_OneWrite`` holds the head until the body's first write (or the connection's close) and
  writes them together;
- one write of the log lines per pass of the event loop, not one per answer (``_AnswerWriter``):
  the answers ready in the same pass go out after one write of every line logged before them.

The 400/431/408 answers are written before the app runs; each carries an ``X-Request-Id`` of its own, and
the 431/408 ones are logged (``http.request_refused``) with it. (The 503 of the connection cap is
uvicorn's own answer, without one.)

The budget counts the bytes of each read while a header section is open. Bytes that arrive in the
same read as the end of the previous request (pipelining) are not counted: at most one socket read
(256 KiB) beyond the budget, never growing.
"""

from __future__ import annotations

import functools
import weakref
from dataclasses import dataclass
from typing import Any

from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from app import log as broker_log
from app.config import Settings
from app.oauth.errors import InvalidRequest, OAuthError
from app.web.direct import DirectToken


class HeadersTooLarge(OAuthError):
    status_code = 431
    description = "The request headers are too large."


class RequestTimeout(OAuthError):
    status_code = 408
    description = "The request was not received in time."


@dataclass(frozen=True)
class HttpLimits:
    header_max: int
    header_timeout: float
    body_timeout: float


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run`` that bound what one connection can hold."""
    limits = HttpLimits(settings.http_header_max, settings.http_header_timeout, settings.http_body_timeout)
    return {
        # A partial of a module-level class pickles, so worker processes get the same limits.
        "http": functools.partial(BoundedHttpToolsProtocol, limits=limits),
        # uvicorn answers 503 (its text body) to a request that arrives while this many
        # connections are open counting its own, so N are served and connection N + 1 is refused.
        "limit_concurrency": settings.http_max_connections + 1,
        "log_config": broker_log.uvicorn_log_config(),
        "log_level": "warning",
    }


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, limits: HttpLimits, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._limits = limits
        # Bytes the open header section may still use; None while a body is being read.
        self._budget: int | None = limits.header_max
        # loop.time() by which the open header section or body must be complete; None when idle.
        self._deadline: float | None = None
        self._in_request = False  # a request line has begun and its message is not complete
        # POST /token answered without ASGI (app.web.direct); None on the management listener,
        # with tracing or access lines on, and outside ``serve``.
        self._direct: DirectToken | None = getattr(self.config, "direct_token", None)
        # BROKER_TRUSTED_PROXIES: uvicorn's own trusted-hosts table, from the proxy-headers layer
        # it put around the app, so that a direct request's source is the one ASGI would see.
        self._proxies: Any = None
        if self.config.proxy_headers:
            if isinstance(self.app, ProxyHeadersMiddleware):
                self._proxies = self.app.trusted_hosts
            else:  # not where uvicorn puts it: no direct path rather than the proxy's address
                self._direct = None

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline = self.loop.time() + self._limits.header_timeout
        self._answers = _answer_writer(self.loop)
        _sweeper(self).watch()

    def data_received(self, data: bytes) -> None:
        while self._budget is not None and len(data) > self._budget:
            head, data = data[: self._budget], data[self._budget :]
            self._budget = 0
            if head:
                _data_received(self, head)  # may end the header section; the rest is then the body
            if self.transport.is_closing():
                return
            if self._budget == 0:  # still inside the same header section: refuse before buffering more
                self._refuse(HeadersTooLarge("headers_too_large"), self._previous_done())
                return
        if self._budget is not None:
            self._budget -= len(data)
        if data:
            _data_received(self, data)
        if self._deadline is None:  # this read left a request incomplete: its deadline starts now
            if self._budget is None:
                self._deadline = self.loop.time() + self._limits.body_timeout
            elif self._in_request or self._budget < self._limits.header_max:  # (or blank lines before one)
                self._deadline = self.loop.time() + self._limits.header_timeout

    # Parser callbacks run for every request: attribute writes only (deadlines are set after the
    # read, and only when it left a request incomplete), base methods called without super().
    def on_message_begin(self) -> None:
        self._in_request = True
        _on_message_begin(self)

    def on_headers_complete(self) -> None:
        self._budget = None
        self._deadline = None
        direct = self._direct
        if direct is not None and self.url == direct.path and self._direct_request(direct):
            return
        _on_headers_complete(self)
        cycle = self.cycle
        # A new cycle (not an upgrade): its answer goes through the loop's answer writer, its head
        # held for the body's first write unless no body follows (HEAD).
        if cycle is not None and cycle.transport is self.transport:
            cycle.transport = _OneWrite(self.transport, self._answers, self.scope["method"] != "HEAD")

    def on_body(self, body: bytes) -> None:
        cycle = self.cycle
        if type(cycle) is _DirectCycle:
            cycle.body.append(body)  # at most BROKER_BODY_MAX: its Content-Length was checked
        else:
            _on_body(self, body)

    def on_message_complete(self) -> None:
        self._budget = self._limits.header_max
        self._deadline = None
        self._in_request = False
        cycle = self.cycle
        if type(cycle) is _DirectCycle:
            task = self.loop.create_task(self._answer_directly(cycle))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)  # counted by the connection cap, awaited by a graceful shutdown
        else:
            _on_message_complete(self)

    def _direct_request(self, direct: DirectToken) -> bool:
        """This request (its target is ``direct.path``) is answered by ``direct``: the conditions in
        ``app.web.direct``'s docstring; when they hold, its cycle is a ``_DirectCycle``."""
        parser = self.parser
        if (parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or self.expect_100_continue
                or parser.should_upgrade() or self.root_path
                or (self.cycle is not None and not self.cycle.response_complete)
                or (self.limit_concurrency is not None and (len(self.connections) >= self.limit_concurrency
                                                            or len(self.tasks) >= self.limit_concurrency))):
            return False
        content_type: str | None = None
        length: bytes | None = None
        has_authorization = False
        dpop: tuple[str, ...] = ()
        forwarded: list[bytes] = []
        for name, value in self.headers:
            if name == b"content-type":
                if content_type is not None:
                    return False
                content_type = value.decode("latin-1")
            elif name == b"content-length":
                if length is not None:
                    return False
                length = value
            elif name == b"authorization":
                has_authorization = True
            elif name == b"dpop":
                dpop += (value.decode("latin-1"),)
            elif name == b"x-forwarded-for":
                forwarded.append(value)
            elif name == b"transfer-encoding":
                return False
        if length is None or not length.isdigit() or int(length) > direct.body_max:
            return False
        self.cycle = _DirectCycle(content_type, has_authorization, dpop, parser.should_keep_alive(),
                                  self._source(forwarded))
        return True

    def _source(self, forwarded: list[bytes]) -> str | None:
        """The caller's address as ASGI would have it: the TCP peer, or, when the peer is a trusted
        proxy, the address its ``X-Forwarded-For`` names (uvicorn's ``ProxyHeadersMiddleware``,
        the same table and the same steps)."""
        client = self.client
        host = client[0] if client else None
        proxies = self._proxies
        if forwarded and proxies is not None and host in proxies:
            named, _ = proxies.get_trusted_client_address(b", ".join(forwarded).decode("latin1"))
            if named:
                return named
        return host

    async def _answer_directly(self, cycle: _DirectCycle) -> None:
        """Run ``DirectToken.answer`` and write its answer: the status line, uvicorn's default
        headers (``date``), the endpoint's, ``connection: close`` when the connection ends with it."""
        assert self._direct is not None
        status, head, body = await self._direct.answer(b"".join(cycle.body), cycle.content_type, cycle.has_authorization,
                                                       cycle.source, cycle.dpop)
        transport = self.transport
        cycle.response_started = cycle.response_complete = True
        if cycle.disconnected or transport.is_closing():
            return
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts.append(head)
        parts.append(b"\r\n" if cycle.keep_alive else b"connection: close\r\n\r\n")
        parts.append(body)
        self._answers.write(transport, b"".join(parts))
        if not cycle.keep_alive:
            self._answers.close(transport)
        self.on_response_complete()

    def shutdown(self) -> None:
        """uvicorn closes the idle kept-alive connections: the answers of this pass go out first."""
        self._answers.write_pass()
        super().shutdown()

    def send_400_response(self, msg: str) -> None:
        """uvicorn calls this on a parse error (it has logged a warning): same answer, JSON body."""
        self._answer_and_close(InvalidRequest("http_parse_error"), broker_log.new_request_id())

    def expire(self) -> None:
        """The deadline passed: 408 if a request had begun and nothing of its answer was sent."""
        self._deadline = None
        if not self._in_request:  # nothing of a request arrived: close quietly, like an idle kept-alive connection
            self.transport.close()
        elif self._budget is None:  # reading the body: the answer may already be out (sent early)
            self._refuse(RequestTimeout("body_timeout"), self.cycle is None or not self.cycle.response_started)
        else:
            self._refuse(RequestTimeout("header_timeout"), self._previous_done())

    @property
    def deadline(self) -> float | None:
        return self._deadline

    def _previous_done(self) -> bool:
        """No earlier (pipelined) answer on this connection is still being written."""
        return self.cycle is None or self.cycle.response_complete

    def _refuse(self, error: OAuthError, can_answer: bool) -> None:
        request_id = broker_log.new_request_id()
        broker_log.get_logger().info("http.request_refused", reason=error.reason, status=error.status_code,
                                     source=self.client[0] if self.client else None, request_id=request_id)
        if can_answer:
            self._answer_and_close(error, request_id)
        else:
            self.transport.close()

    def _answer_and_close(self, error: OAuthError, request_id: str) -> None:
        body = error.body()
        head = [STATUS_LINE[error.status_code]]
        for name, value in self.server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head += [b"x-request-id: ", request_id.encode(), b"\r\n"]
        head += [b"content-type: application/json\r\ncache-control: no-store\r\ncontent-length: ",
                 str(len(body)).encode(), b"\r\nconnection: close\r\n\r\n", body]
        self.transport.write(b"".join(head))
        self.transport.close()


class _OneWrite:
    """The transport as one request's cycle sees it: the answer's head (the cycle's first write
    other than an interim ``100 Continue``) is held and written with the next write, the body's
    first part (not for ``HEAD``: uvicorn writes no body for it); ``close`` writes a held head
    first. Every write and the close go through the loop's ``_AnswerWriter``; everything else is
    the real transport's.

    Only the cycle refers to it and it refers only to the transport and the loop's writer: no
    reference cycle, so a request's objects are still freed by reference counting, not left to
    the garbage collector."""

    __slots__ = ("transport", "answers", "hold", "head", "started")

    def __init__(self, transport: Any, answers: _AnswerWriter, hold: bool) -> None:
        self.transport = transport
        self.answers = answers
        self.hold = hold
        self.head: bytes | None = None
        self.started = False

    def write(self, data: bytes) -> None:
        if self.head is not None:
            data, self.head = self.head + data, None
        elif not self.started and not data.startswith(b"HTTP/1.1 100 "):
            self.started = True
            if self.hold:
                self.head = data
                return
        self.answers.write(self.transport, data)

    def close(self) -> None:
        if self.head is not None:
            head, self.head = self.head, None
            self.answers.write(self.transport, head)
        self.answers.close(self.transport)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


class _AnswerWriter:
    """One per event loop: the answers of one pass of the loop go out after **one** write of the
    log lines (``app.log``) instead of one write per answer.

    A request's lines must be out before its answer. Writing them when each answer starts costs a
    ``write`` system call per answer; under load the answers of several requests are ready in the
    same pass (their Redis replies arrive in one read). So when an answer is written while lines
    are waiting, it is queued, and a callback at the end of the pass writes all the lines, then
    every queued answer and close, in the order they came. With no lines waiting and nothing
    queued an answer is written at once. A queued answer to a connection that closed meanwhile is
    dropped; a shutdown writes the pass first. If stdout cannot be written, the queued answers are
    not sent (no token without its audit line): their connections are closed."""

    __slots__ = ("loop", "queue", "scheduled", "__weakref__")

    def __init__(self, loop: Any) -> None:
        self.loop = weakref.ref(loop)  # the two per-loop tables hold the writer; it must not hold the loop
        self.queue: list[tuple[Any, bytes | None]] = []
        self.scheduled = False
        broker_log.flush_before_answers(loop, self.flush_soon)

    def write(self, transport: Any, data: bytes) -> None:
        if self.scheduled:
            self.queue.append((transport, data))
        elif broker_log.lines_pending():
            self.flush_soon()
            self.queue.append((transport, data))
        else:
            transport.write(data)

    def close(self, transport: Any) -> None:
        if self.scheduled:
            self.queue.append((transport, None))
        else:
            transport.close()

    def flush_soon(self) -> None:
        loop = self.loop()
        if not self.scheduled and loop is not None:
            self.scheduled = True
            loop.call_soon(self.write_pass)

    def write_pass(self) -> None:
        self.scheduled = False
        queue, self.queue = self.queue, []
        try:
            broker_log.flush_or_raise()
        except (OSError, ValueError):
            for transport, _ in queue:
                transport.close()
            return
        for transport, data in queue:
            if data is None:
                transport.close()
            elif not transport.is_closing():
                transport.write(data)


_WRITERS: weakref.WeakKeyDictionary[Any, _AnswerWriter] = weakref.WeakKeyDictionary()


def _answer_writer(loop: Any) -> _AnswerWriter:
    writer = _WRITERS.get(loop)
    if writer is None:
        writer = _WRITERS[loop] = _AnswerWriter(loop)
    return writer


class _NoEvent:
    """``connection_lost`` sets the cycle's ``message_event``: a direct cycle has nobody waiting."""

    __slots__ = ()

    def set(self) -> None:
        pass


_NO_EVENT = _NoEvent()


class _DirectCycle:
    """A request answered by ``app.web.direct``, where uvicorn keeps its request/response cycle
    (``self.cycle``): the attributes uvicorn's protocol reads or sets on a cycle (``keep_alive``,
    ``response_complete``, ``disconnected``, ``message_event``) and ``expire`` reads
    (``response_started``), and the parts of the request the endpoint takes."""

    __slots__ = ("content_type", "has_authorization", "dpop", "keep_alive", "source", "body", "response_started",
                 "response_complete", "disconnected", "message_event")

    def __init__(self, content_type: str | None, has_authorization: bool, dpop: tuple[str, ...], keep_alive: bool,
                 source: str | None) -> None:
        self.content_type = content_type
        self.has_authorization = has_authorization
        self.dpop = dpop
        self.keep_alive = keep_alive
        self.source = source
        self.body: list[bytes] = []
        self.response_started = False
        self.response_complete = False
        self.disconnected = False
        self.message_event = _NO_EVENT


_data_received = HttpToolsProtocol.data_received
_on_body = HttpToolsProtocol.on_body
_on_message_begin = HttpToolsProtocol.on_message_begin
_on_headers_complete = HttpToolsProtocol.on_headers_complete
_on_message_complete = HttpToolsProtocol.on_message_complete


class _Sweeper:
    """One timer per server (process): closes the connections whose deadline has passed."""

    def __init__(self, protocol: BoundedHttpToolsProtocol) -> None:
        self.loop = protocol.loop
        self.connections = protocol.connections
        limits = protocol._limits
        self.interval = max(0.05, min(1.0, limits.header_timeout / 4, limits.body_timeout / 4))
        self.handle: Any = None

    def watch(self) -> None:
        if self.handle is None:
            self.handle = self.loop.call_later(self.interval, self.sweep)

    def sweep(self) -> None:
        now = self.loop.time()
        expired = [c for c in self.connections if getattr(c, "deadline", None) is not None and c.deadline <= now]
        for conn in expired:
            if not conn.transport.is_closing():
                conn.expire()
        self.handle = self.loop.call_later(self.interval, self.sweep) if self.connections else None


_SWEEPERS: weakref.WeakKeyDictionary[Any, _Sweeper] = weakref.WeakKeyDictionary()


def _sweeper(protocol: BoundedHttpToolsProtocol) -> _Sweeper:
    sweeper = _SWEEPERS.get(protocol.server_state)
    if sweeper is None:
        sweeper = _SWEEPERS[protocol.server_state] = _Sweeper(protocol)
    return sweeper
