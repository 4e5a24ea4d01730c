"""Two listeners in every worker process: the public one and the management one.

``serve`` binds both sockets once, in the starting process (a taken port stops the start with one
line naming the setting), then runs uvicorn for the public app: one process, or the
``Multiprocess`` supervisor with the one shared public socket. uvicorn builds each worker's server
from the pickled ``Config``; ``BrokerConfig`` carries the management ``Config`` and socket along,
and the socket a worker reports a start-up failure on (``app.web.start_report``; multiprocessing
passes a socket to a spawned child by duplicating its descriptor) and, when the
worker loads it, wraps the server's lifespan so that:

- after the app's startup succeeded, a second ``uvicorn.Server`` serves the management app
  (``app.web.asgi:management``, the same process's state) on that socket, on the same event loop,
  with the same per-connection bounds (``app.web.server.uvicorn_options``) and a connection cap
  of its own, so a flood of the public port does not fail the health checks;
- the management server captures no signals: SIGTERM stays the public server's, which the drain
  (``app.web.drain``) wraps, so ``/readyz`` on the management port says ``draining`` while both
  ports still serve; the public server then stops accepting and finishes its requests, and the
  management listener is stopped last, just before the app's shutdown.

``broker.started`` is written by each worker once its public socket listens: the socket is bound
in the starting process, uvicorn starts listening on it only after the lifespan's startup, then calls the config's ``callback_notify`` on its main loop's first
tick (and every ``timeout_notify`` seconds after; only the first call writes the line).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import socket
from collections.abc import Iterator
from typing import Any

import uvicorn
from uvicorn.supervisors import Multiprocess

from app import log as broker_log
from app.config import ConfigError, Settings
from app.metrics_files import worker_metrics_directory
from app.preflight import bind_listeners
from app.web.app import start_summary
from app.web.server import uvicorn_options
from app.web.start_report import STARTUP_FAILURE, Reports, guard_lifespan, guard_load

#: Seconds between uvicorn's later ``callback_notify`` calls (no-ops after the first).
_ONE_DAY = 86400


def serve(settings: Settings, *, host: str, port: int, workers: int, graceful_timeout: int) -> int:
    """Run the broker until it is stopped; the exit status. Raises ``StartupFailure`` (one line)
    for a port it cannot bind or a worker whose start-up failed (``app.web.start_report``)."""
    if port == settings.management_port:
        raise ConfigError(f"BROKER_MANAGEMENT_PORT={port} is also the public --port: give them different ports")
    # Both ports are bound here, before any app starts: a taken port is one line, and the app's
    # start-up (its broker.started line) comes after the bind.
    public, management_socket = bind_listeners(settings, host, port)
    common = {
        **uvicorn_options(settings),  # header cap, read deadlines, connection cap, JSON-only logging
        "access_log": False,
        "server_header": False,
        # SIGTERM: stop accepting, let in-flight requests finish, then exit (rolling restarts).
        "timeout_graceful_shutdown": graceful_timeout,
    }
    management = uvicorn.Config("app.web.asgi:management", host=settings.management_host,
                                port=settings.management_port, lifespan="off", proxy_headers=False, **common)
    reports = Reports()
    config = BrokerConfig(
        "app.web.asgi:app", host=host, port=port, workers=workers, management=management,
        management_socket=management_socket,
        reports=reports.writer,
        # uvicorn trusts X-Forwarded-For from loopback unless told otherwise; the broker reads
        # it only from BROKER_TRUSTED_PROXIES (the per-address rate limit keys on the result).
        proxy_headers=bool(settings.trusted_proxies), forwarded_allow_ips=list(settings.trusted_proxies), **common,
    )
    server = uvicorn.Server(config)
    if workers > 1:
        with worker_metrics_directory(workers):  # one scrape adds up every worker (app/metrics_files.py)
            supervisor = Multiprocess(config, sockets=[public])
            supervisor.run()
        started = not any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes)
    else:
        with contextlib.suppress(SystemExit):  # uvicorn's exit for a failed start-up: reported below
            server.run(sockets=[public])
        started = server.started
    failure = reports.close()
    if failure is not None:
        raise failure
    return 0 if started else STARTUP_FAILURE


class BrokerConfig(uvicorn.Config):
    """The public listener's uvicorn config, carrying the management listener's config and socket."""

    def __init__(self, app: str, *, management: uvicorn.Config, management_socket: socket.socket,
                 reports: socket.socket, **kwargs: Any) -> None:
        super().__init__(app, timeout_notify=_ONE_DAY, **kwargs)
        self.management = management
        self.management_socket = management_socket
        self.reports = reports
        self._broker_app: Any = None
        self._announced = False

    def load_app(self) -> Any:
        self._broker_app = super().load_app()  # the Litestar app, before uvicorn wraps it
        return self._broker_app

    def load(self) -> None:
        with guard_load(self.reports):
            super().load()
        guard_lifespan(self, self.reports)  # a failed start-up: one line from the starting process
        self.lifespan_class = functools.partial(  # type: ignore[assignment]
            ManagementLifespan, app_lifespan=self.lifespan_class, management=self.management, sock=self.management_socket)
        self.callback_notify = self._listening

    @property
    def direct_token(self) -> Any:
        """What ``app.web.server``'s protocol answers ``POST /token`` with (``app.web.direct``), or None."""
        return None if self._broker_app is None else self._broker_app.state.get("direct_token")

    async def _listening(self) -> None:
        """uvicorn's first main-loop tick: the public socket listens (module docstring)."""
        if self._announced:
            return
        self._announced = True
        broker_log.get_logger().info("broker.started", **start_summary(self._broker_app),
                                     listen=f"{self.host}:{self.port}",
                                     management=f"{self.management.host}:{self.management.port}")


class ManagementLifespan:
    """The public server's lifespan (uvicorn calls ``startup``/``shutdown``, reads ``should_exit``
    and ``state``), with the management listener started after the app's startup and stopped
    before its shutdown."""

    def __init__(self, config: uvicorn.Config, *, app_lifespan: Any, management: uvicorn.Config, sock: socket.socket) -> None:
        self._app = app_lifespan(config)
        self._management = management
        self._socket = sock
        self._server: _ManagementServer | None = None
        self._task: asyncio.Task[None] | None = None
        self._failed = False

    @property
    def should_exit(self) -> bool:
        return bool(self._app.should_exit) or self._failed

    @property
    def state(self) -> dict[str, Any]:
        return self._app.state  # type: ignore[no-any-return]

    async def startup(self) -> None:
        await self._app.startup()
        if self._app.should_exit:
            return
        if not self._management.loaded:
            self._management.load()
        server = self._server = _ManagementServer(self._management)
        self._task = asyncio.create_task(server.serve(sockets=[self._socket]))
        listening = asyncio.create_task(server.listening.wait())
        await asyncio.wait({self._task, listening}, return_when=asyncio.FIRST_COMPLETED)
        if not listening.done():  # the management server ended before it listened
            listening.cancel()
            error = self._task.exception() if not self._task.cancelled() else None
            broker_log.get_logger().error("management.listener_failed", error=type(error).__name__ if error else None)
            self._failed = True
            await self._app.shutdown()

    async def shutdown(self) -> None:
        if self._server is not None and self._task is not None:
            self._server.should_exit = True
            try:
                await self._task
            except Exception as exc:  # the app's shutdown still runs
                broker_log.get_logger().error("management.listener_failed", error=type(exc).__name__)
        try:
            await self._app.shutdown()
        finally:
            # The last step of a clean stop: uvicorn then re-raises the SIGTERM it caught, which
            # ends the process without running atexit, so the buffered lines go out here.
            broker_log.flush()


class _ManagementServer(uvicorn.Server):
    """A uvicorn server that leaves the process's signals to the public server."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.listening = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.listening.set()
