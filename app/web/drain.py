"""Drain before a graceful shutdown: on SIGTERM, ``/readyz`` (on the management listener)
answers 503 ``draining`` for ``BROKER_SHUTDOWN_DRAIN`` seconds while every request on both
listeners is still served, so a load balancer's health check (HAProxy ``option httpchk GET
/readyz`` on the management port, a Kubernetes readiness probe) takes the replica out of rotation
first. Only then does uvicorn's own SIGTERM handling run: stop accepting, finish in-flight requests
(``--graceful-timeout``), exit; the management listener stops last (``app.web.listeners``).
Without the drain, a connection the kernel accepted just before the listening socket closed is
reset with the request unanswered.

uvicorn installs the public server's signal handlers before the lifespan starts (the management
server installs none); ``install`` wraps its SIGTERM one from the lifespan (main thread only:
in-process test clients run the lifespan elsewhere), with or without a drain, so that every
SIGTERM writes ``broker.stopping`` first; the app's lifespan writes ``broker.stopped`` at its end.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable
from typing import Any


class Drain:
    """SIGTERM in a served process: the ``broker.stopping`` line (with the requests in flight at
    that moment), then the drain, then uvicorn's graceful shutdown."""

    def __init__(self, seconds: float, log: Any, *, in_flight: Callable[[], int] = lambda: 0) -> None:
        self.seconds = seconds
        self.draining = False
        self._stopping = False
        self._log = log
        self._in_flight = in_flight

    def install(self) -> bool:
        if threading.current_thread() is not threading.main_thread():
            return False
        loop = asyncio.get_running_loop()
        previous = signal.getsignal(signal.SIGTERM)

        def finish(sig: int) -> None:
            if callable(previous):
                previous(sig, None)
            else:  # nobody handled SIGTERM before us: restore the default and deliver it
                signal.signal(signal.SIGTERM, previous or signal.SIG_DFL)
                signal.raise_signal(sig)

        def on_sigterm(sig: int, frame: Any) -> None:
            if self._stopping:  # a second SIGTERM: stop draining, shut down now
                loop.call_soon_threadsafe(finish, sig)
                return
            self._stopping = True
            self.draining = self.seconds > 0
            loop.call_soon_threadsafe(self._start, loop, finish, sig)

        signal.signal(signal.SIGTERM, on_sigterm)
        return True

    def _start(self, loop: asyncio.AbstractEventLoop, finish: Any, sig: int) -> None:
        self._log.info("broker.stopping", in_flight=self._in_flight(), drain_seconds=self.seconds)
        if self.draining:
            loop.call_later(self.seconds, finish, sig)
        else:
            finish(sig)
