"""The I/O a token flow asks for, and the one way to step a flow.

The client's logic is written once, as generators that yield effects (a request to the broker, a
command for the shared Redis cache, a pause) and receive their results, in the manner of httpx's
``Auth.auth_flow``. ``SyncShell`` and ``AsyncShell`` (``shells.py``) perform the effects with
blocking or asyncio I/O; a test can answer them by hand, without sockets.
"""

from __future__ import annotations

from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class HttpCall:
    """Send this request to the broker; the flow receives the ``httpx.Response`` (body read), or
    the ``httpx.HTTPError`` thrown in."""

    method: str
    url: str
    form: dict[str, str] | None = None
    headers: dict[str, str] | None = None  # a DPoP proof (RFC 9449 §4.1)


@dataclass(frozen=True)
class RedisCommand:
    """Call ``method(*args, **kwargs)`` on the shared cache's redis-py client; the flow receives
    the reply, or the ``RedisError``/``OSError`` thrown in."""

    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Sleep:
    """Pause before polling the shared cache again."""

    seconds: float


Effect = HttpCall | RedisCommand | Sleep
Flow = Generator[Effect, Any, T]


@dataclass(frozen=True)
class Done(Generic[T]):
    """The flow has returned ``value``."""

    value: T


def advance(flow: Generator[Any, Any, T], result: Any = None, error: BaseException | None = None) -> Any:
    """Send ``result`` into the flow, or throw ``error`` into it (the effect failed); the flow's
    next effect, or ``Done`` with its return value. An exception the flow does not handle
    propagates to the caller."""
    try:
        return flow.send(result) if error is None else flow.throw(error)
    except StopIteration as stop:
        return Done(stop.value)
