"""Structured logging: structlog, one JSON object per line on stdout.

Events are dotted nouns and verbs (``token.issued``, ``client_auth.rejected``). Assertions,
tokens and private keys are never passed to a logger; attacker-controlled strings are truncated
and every line is plain ASCII JSON (CR/LF, control characters, non-ASCII text and lone surrogates
escaped, never raised on).

Lines are rendered by ``msgspec`` (under 1 µs against about 4 µs for stdlib ``json``); a line that
would not be plain ASCII (non-ASCII text, a lone surrogate, an object msgspec does not know) is
rendered again by stdlib ``json`` with ``ensure_ascii``, so every line stays ASCII as before: no
raw U+2028, ANSI escape or surrogate ever reaches a log reader. The fields every line gets (pid,
request id, level, timestamp) are added by one processor; the timestamp's date and time of day
are formatted once per second.

A served process's stdout is written through ``LineBuffer``: the lines logged while a request is
handled collect in memory and are written before its answer (what a reader correlating answers
and lines expects, and an audit line's promise), and again when the request ends (its access
line): ``flush_request_lines`` (``app.web.access``, when the answer starts and when the request
ends). Under the HTTP server (``app.web.server._AnswerWriter``) that is one write per pass of the
event loop: the answers ready in the same pass wait for the end of the pass, where every line
goes out in one write, then the answers. Elsewhere (tests driving the app directly) the lines go
out at once. Lines also go out at once for
every ``error`` or ``critical`` line (with everything before it), for any line written outside a
request or outside an event loop (start-up, background tasks, CLI commands, other threads), when
64 KiB have collected, and 0.2 s after the first buffered line at the latest (a timer on the
running event loop: a request still waiting on Redis does not hold the others' lines). A
clean stop loses nothing: the served app's lifespan shutdown ends with ``flush()``
(``app.web.listeners``; uvicorn then re-raises the SIGTERM it caught, which skips ``atexit``), and
``atexit`` flushes every other way out. A process killed outright (SIGKILL, OOM) loses at most
the lines of the last 0.2 s, never more than 64 KiB. An explicit ``stream`` (tests) is written
line by line.

Every line carries ``pid`` (the worker process that wrote it) and, when written while a request is
handled, that request's ``request_id``: the value of the ``X-Request-Id`` response header, set by
the listener's outermost layer (``app.web.access``) in ``REQUEST_ID``, a plain ``ContextVar`` read
by one processor (cheaper per request than structlog's ``bind_contextvars``: one ``set``, no
dict of tokens). Each request runs in its own asyncio task, so the value ends with the request.

In a served process, standard-library logging (uvicorn, httpx, asyncio, ``warnings``) goes through
the same renderer, so every line the process writes is one JSON object: ``uvicorn_log_config`` is
the logging configuration uvicorn applies in every process it starts (supervisor and workers),
instead of its text formatters. Third-party records are kept at WARNING and above (httpx logs each
request's full URL at INFO), and any URL in them loses its query string.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import re
import sys
import threading
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar
from typing import Any

import msgspec
import structlog

from app.aio import running_loop_or_none

_MAX_FIELD = 200
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


#: The id of the request being handled (``app.web.access`` sets it; None outside a request).
REQUEST_ID: ContextVar[str | None] = ContextVar("broker_request_id", default=None)


_IDS: list[str] = []


def new_request_id() -> str:
    """24 hex digits from the OS's random source: never taken from the caller (docs/operations.md).

    Drawn 256 at a time (one ``getrandom`` call per 256 requests instead of one each: a system call
    costs several µs on small VMs); a forked child empties the pool it inherited (``_refresh_pid``)."""
    try:
        return _IDS.pop()
    except IndexError:
        raw = os.urandom(12 * 256).hex()
        _IDS.extend(raw[i:i + 24] for i in range(0, len(raw), 24))
        return _IDS.pop()


def current_request_id() -> str:
    """The id of the request being handled; a fresh one outside a request (a direct service call)."""
    return REQUEST_ID.get() or new_request_id()


_PID = os.getpid()


def _refresh_pid() -> None:
    global _PID
    _PID = os.getpid()
    _IDS.clear()  # never the parent's ids


# uvicorn starts workers with multiprocessing "spawn" (a fresh import: _PID is right); a server that
# forks after import (gunicorn --preload) gets its child's pid here.
os.register_at_fork(after_in_child=_refresh_pid)


def _add_process_and_request(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    event["pid"] = _PID
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    return event


def _truncate(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for k, v in event.items():
        if isinstance(v, str) and len(v) > _MAX_FIELD:
            event[k] = v[:_MAX_FIELD] + "..."
    return event


_second = -1
_second_text = ""


def _timestamp() -> str:
    """ISO 8601 UTC with microseconds (``2026-12-01T11:02:15.123456Z``); the part up to the
    second is formatted once per second."""
    global _second, _second_text
    now = time.time()
    second = int(now)
    if second != _second:
        _second_text, _second = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)), second
    return f"{_second_text}.{int((now - second) * 1e6):06d}Z"


_LEVEL_NAMES = {"warn": "warning", "exception": "error"}


def _stamp(_: Any, method: str, event: dict[str, Any]) -> dict[str, Any]:
    """pid, request id, level and timestamp, then long strings truncated: the broker's own
    lines in one processor call instead of four."""
    event["pid"] = _PID
    request_id = REQUEST_ID.get()
    if request_id is not None:
        event.setdefault("request_id", request_id)
    event["level"] = _LEVEL_NAMES.get(method, method)
    event["timestamp"] = _timestamp()
    for k, v in event.items():
        if isinstance(v, str) and len(v) > _MAX_FIELD:
            event[k] = v[:_MAX_FIELD] + "..."
    return event


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, default=repr, ensure_ascii=True, separators=(",", ":"))


_ENCODER = msgspec.json.Encoder()


def _render(_: Any, __: str, event: dict[str, Any]) -> str:
    """One JSON line: msgspec when the result is plain ASCII, else stdlib ``json`` (``_dumps``)."""
    try:
        line = _ENCODER.encode(event)
    except (TypeError, UnicodeEncodeError, OverflowError, ValueError):
        return _dumps(event)
    return line.decode("ascii") if line.isascii() else _dumps(event)


class LineBuffer:
    """The served process's stdout, written in batches (the flush policy is in the module
    docstring). Thread-safe: stdlib records from other threads go through it too."""

    LIMIT = 64 * 1024
    DELAY = 0.2

    def __init__(self, file: Any) -> None:
        self.file = file
        self._lines: list[str] = []
        self._size = 0
        self._lock = threading.Lock()
        self._timer_loop: Any = None

    def write_line(self, line: str, urgent: bool = False) -> None:
        with self._lock:
            self._lines.append(line)
            self._size += len(line)
            loop = running_loop_or_none()
            if urgent or loop is None or REQUEST_ID.get() is None or self._size >= self.LIMIT:
                self._flush_locked()
            elif self._timer_loop is not loop:  # one armed timer at a time, not one per line
                self._timer_loop = loop
                loop.call_later(self.DELAY, self._flush_later)

    @property
    def pending(self) -> bool:
        return bool(self._lines)

    def flush(self) -> None:
        with self._lock:
            self._flush_locked()

    def _flush_later(self) -> None:
        self._timer_loop = None
        try:
            self.flush()
        except (OSError, ValueError):  # stdout gone (closed pipe): nothing left to tell
            pass

    def _flush_locked(self) -> None:
        if not self._lines:
            return
        text = "".join(self._lines)
        self._lines.clear()
        self._size = 0
        self.file.write(text)
        self.file.flush()

    # The structlog logger interface: one method per level, each given the rendered line.
    def msg(self, message: str) -> None:
        self.write_line(message + "\n")

    def error(self, message: str) -> None:
        self.write_line(message + "\n", urgent=True)

    debug = info = warning = warn = log = msg
    critical = exception = fatal = failure = error


class _StreamLogger:
    """An explicit stream (tests): every line written and flushed at once."""

    def __init__(self, file: Any) -> None:
        self.file = file

    def msg(self, message: str) -> None:
        self.file.write(message + "\n")
        self.file.flush()

    debug = info = warning = warn = log = error = critical = exception = fatal = failure = msg


_stdout: LineBuffer | None = None


def stdout_buffer() -> LineBuffer:
    """The one ``LineBuffer`` over ``sys.stdout`` of this process (flushed at exit)."""
    global _stdout
    if _stdout is None or _stdout.file is not sys.stdout:
        if _stdout is not None:
            _stdout.flush()
        _stdout = LineBuffer(sys.stdout)
    return _stdout


def flush() -> None:
    """Write out whatever the stdout buffer holds (also run at exit)."""
    if _stdout is not None:
        try:
            _stdout.flush()
        except (OSError, ValueError):
            pass


#: Per event loop, registered by the HTTP server (``app.web.server``): what ``flush_request_lines``
#: calls instead of writing at once. The server then writes every line of the loop's pass in one
#: write before it writes any answer of that pass.
_PASS_FLUSHERS: weakref.WeakKeyDictionary[Any, Callable[[], None]] = weakref.WeakKeyDictionary()


def flush_before_answers(loop: Any, flusher: Callable[[], None]) -> None:
    """On ``loop``, ``flush_request_lines`` calls ``flusher`` (which must write the lines before
    the next answer leaves) instead of writing the lines itself."""
    _PASS_FLUSHERS[loop] = flusher


def flush_request_lines() -> None:
    """Called by ``app.web.access`` when an answer starts and when a request ends: the lines the
    request logged go out before its answer does (at once, or through the loop's pass flusher)."""
    if _stdout is not None and _stdout.pending:
        loop = running_loop_or_none()
        later = _PASS_FLUSHERS.get(loop) if loop is not None else None
        if later is None:
            _stdout.flush()
        else:
            later()


def lines_pending() -> bool:
    """Lines are waiting in the stdout buffer."""
    return _stdout is not None and _stdout.pending


def flush_or_raise() -> None:
    """``flush`` that lets an ``OSError`` / ``ValueError`` of stdout through (the HTTP server
    writes no answer whose lines could not be written)."""
    if _stdout is not None:
        _stdout.flush()


atexit.register(flush)


#: Loggers of other libraries: their records below WARNING are dropped.
_FOREIGN_LEVEL = logging.WARNING
_URL_QUERY = re.compile(r"""([A-Za-z][A-Za-z0-9+.-]*://[^\s?#"']*)\?[^\s#"']*""")


def _strip_url_queries(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    """A third-party message may quote a URL (a client's jwks_uri); its query is not logged."""
    for k, v in event.items():
        if isinstance(v, str) and "://" in v:
            event[k] = _URL_QUERY.sub(r"\1?[query removed]", v)
    return event


def without_query(url: str | None) -> str | None:
    """A URL as the broker's own events carry it: a query may hold a tenant or a token, so it goes."""
    return None if url is None else _URL_QUERY.sub(r"\1?[query removed]", url)


def stdlib_formatter() -> logging.Formatter:
    """Standard-library records rendered as the broker's JSON lines (third-party URL queries removed)."""
    return structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            _add_process_and_request,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _strip_url_queries,
            _truncate,
        ],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, _render],
    )


class _BufferedHandler(logging.Handler):
    """Standard-library records into the same stdout buffer as the broker's own lines (one
    order, one flush policy)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stdout_buffer().write_line(self.format(record) + "\n", urgent=record.levelno >= logging.ERROR)
        except Exception:  # logging must not raise into the caller (the stdlib convention)
            self.handleError(record)


def process_handler() -> logging.Handler:
    """The root handler of a served process (stdout); ``warnings.warn`` output goes through it too."""
    logging.captureWarnings(True)
    handler = _BufferedHandler()
    handler.setFormatter(stdlib_formatter())
    return handler


def uvicorn_log_config() -> dict[str, Any]:
    """``logging.config.dictConfig`` input for uvicorn, applied in each process it starts."""
    foreign = logging.getLevelName(_FOREIGN_LEVEL)
    loggers: dict[str, Any] = {name: {"handlers": [], "propagate": True} for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}
    # Request lines with full URLs are INFO/DEBUG: keep them out even if the root level is lowered.
    loggers.update({name: {"level": foreign} for name in ("httpx", "httpcore")})
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "handlers": {"json": {"()": "app.log.process_handler"}},
        "root": {"handlers": ["json"], "level": foreign},
        "loggers": loggers,
    }


def configure(level: str = "info", stream: Any = None) -> None:
    """Lines to ``stream`` one by one, or (None) to this process's buffered stdout."""
    sink: Any = _StreamLogger(stream) if stream is not None else stdout_buffer()
    structlog.configure(
        processors=[_stamp, _render],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=lambda *_: sink,
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "broker") -> Any:
    return structlog.get_logger(name)
