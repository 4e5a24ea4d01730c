"""A worker's start-up failure ends the whole server with one line from the starting process.

Most failures are found before any worker starts (``app.preflight``). What can only fail inside a
worker (its app's start-up, after the checks: Redis gone in between, a registry write refused) is
reported here:

- ``guard_lifespan`` wraps the worker's ASGI app for the lifespan only (the requests reach the app
  itself, no extra frame): when the app's lifespan start-up fails, the
  failure is described (``app.start_failures.describe``) and sent to the starting process over a
  datagram socket pair, and uvicorn is told "startup failed" without the traceback text (a failure
  ``describe`` does not know keeps its traceback in the JSON log). uvicorn then ends the worker
  with its start-up failure status (3), and its supervisor stops the other workers;
- ``guard_load`` does the same for an exception while the worker imports the app;
- the starting process reads the first report (``Reports.close``) after the server has stopped:
  one line however many workers failed.
"""

from __future__ import annotations

import contextlib
import socket
import sys
from collections.abc import Iterator
from typing import Any

from app.config import Settings
from app.start_failures import ENVIRONMENT, StartupFailure, describe

#: uvicorn's exit status for a worker that could not start (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE = 3


class Reports:
    """The starting process's end of the channel; ``writer`` goes to the workers (it pickles)."""

    def __init__(self) -> None:
        self._reader, self.writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._reader.setblocking(False)

    def close(self) -> StartupFailure | None:
        """The first failure a worker reported, if any; the channel is closed."""
        try:
            status, _, line = self._reader.recv(65536).decode().partition("\n")
        except BlockingIOError:
            return None
        finally:
            self._reader.close()
            self.writer.close()
        return StartupFailure(line, int(status))


def send(writer: socket.socket, exc: BaseException) -> StartupFailure | None:
    """Describe ``exc`` and send the line to the starting process; the failure, or None if unknown."""
    try:
        settings: Settings | None = Settings.from_env()
    except Exception:
        settings = None
    failure = describe(exc, settings)
    report = failure or StartupFailure(f"start-up failed: {type(exc).__name__}: {str(exc)[:200]}; the JSON log on "
                                       "stdout has the traceback", ENVIRONMENT)
    with contextlib.suppress(OSError):
        writer.send(f"{report.status}\n{report.line}".encode()[:65000])
    return failure


@contextlib.contextmanager
def guard_load(writer: socket.socket) -> Iterator[None]:
    """Around the worker's import of the app: a failure is reported and ends the worker with 3."""
    try:
        yield
    except Exception as exc:
        if send(writer, exc) is None:
            raise
        sys.exit(STARTUP_FAILURE)


def guard_lifespan(config: Any, writer: socket.socket) -> None:
    """Wrap ``config.loaded_app`` for the lifespan only (see the module docstring): once the
    start-up completed, ``config.loaded_app`` is the app again, so the connections (whose
    protocol reads it when they open) call the app with no extra frame."""
    app = config.loaded_app

    async def guarded(scope: Any, receive: Any, send_message: Any) -> None:
        if scope["type"] != "lifespan":
            await app(scope, receive, send_message)
            return
        held: list[Any] = []

        async def hold_failure(message: Any) -> None:
            if message["type"] == "lifespan.startup.failed":
                held.append(message)  # answered below, once the exception itself is known
                return
            if message["type"] == "lifespan.startup.complete":
                config.loaded_app = app
            await send_message(message)

        try:
            await app(scope, receive, hold_failure)
        except BaseException as exc:
            if not held:
                raise
            known = send(writer, exc)
            await send_message({**held[0], "message": "" if known else held[0].get("message", "")})
            return
        for message in held:  # the app reported the failure without raising: pass it on as it was
            await send_message(message)

    config.loaded_app = guarded
