"""Structured logging: structlog, one JSON object per line on stdout.

Events are dotted nouns and verbs (``token.issued``, ``client_auth.rejected``). Assertions,
tokens and private keys are never passed to a logger; attacker-controlled strings are truncated
and rendered by stdlib ``json`` (which escapes CR/LF and lone surrogates instead of raising).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import structlog

_MAX_FIELD = 200
_LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING, "error": logging.ERROR}


def _truncate(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    for k, v in event.items():
        if isinstance(v, str) and len(v) > _MAX_FIELD:
            event[k] = v[:_MAX_FIELD] + "..."
    return event


def _dumps(obj: Any, **kw: Any) -> str:
    return json.dumps(obj, default=repr, ensure_ascii=True, separators=(",", ":"))


def configure(level: str = "info", stream: Any = None) -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
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
