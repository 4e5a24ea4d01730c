"""Structured logging: structlog, one JSON object per line on stdout.

Events are dotted nouns and verbs (``token.issued``, ``client_auth.rejected``). Assertions,
tokens and private keys are never passed to a logger; attacker-controlled strings are truncated
and rendered by stdlib ``json`` (which escapes CR/LF and lone surrogates instead of raising).

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

import json
import logging
import os
import re
import sys
from contextvars import ContextVar
from typing import Any

import structlog

_MAX_FIELD = 200
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


#: The id of the request being handled (``app.web.access`` sets it; None outside a request).
REQUEST_ID: ContextVar[str | None] = ContextVar("broker_request_id", default=None)


def new_request_id() -> str:
    """24 hex digits from the OS's random source: never taken from the caller (docs/operations.md)."""
    return os.urandom(12).hex()


def current_request_id() -> str:
    """The id of the request being handled; a fresh one outside a request (a direct service call)."""
    return REQUEST_ID.get() or new_request_id()


_PID = os.getpid()


def _refresh_pid() -> None:
    global _PID
    _PID = os.getpid()


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


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, default=repr, ensure_ascii=True, separators=(",", ":"))


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
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(serializer=_dumps)],
    )


def process_handler() -> logging.Handler:
    """The root handler of a served process (stdout); ``warnings.warn`` output goes through it too."""
    logging.captureWarnings(True)
    handler = logging.StreamHandler(sys.stdout)
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
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            _add_process_and_request,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _truncate,
            structlog.processors.JSONRenderer(serializer=_dumps),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[level]),
        logger_factory=structlog.WriteLoggerFactory(file=stream or sys.stdout),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str = "broker") -> Any:
    return structlog.get_logger(name)
