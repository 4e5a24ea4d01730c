"""The running event loop, without a system call.

``asyncio.get_running_loop`` (and ``_get_running_loop``, ``ensure_future`` without a loop) checks
the process id with ``getpid()`` on every call, so that a forked child does not use its parent's
loop. glibc does not cache the pid, so that is a system call each time: on the small VMs the
benchmark runs on, the four calls a token request made this way were 5-7% of its CPU (py-spy,
docs/performance.md). Here the loop is remembered per thread — a thread runs one loop at a time,
and every loop the broker runs stays in the thread that started it — and looked up again only
when the remembered one is not running (the thread's loop ended: a test suite or a CLI runs
``asyncio.run`` many times). A forked child forgets every remembered loop.
"""

from __future__ import annotations

import asyncio
import os
from threading import get_ident

_LOOPS: dict[int, asyncio.AbstractEventLoop] = {}


def running_loop() -> asyncio.AbstractEventLoop:
    """The running loop of this thread; RuntimeError when there is none (as ``get_running_loop``)."""
    loop = _LOOPS.get(get_ident())
    if loop is None or not loop.is_running():
        loop = asyncio.get_running_loop()
        _remember(loop)
    return loop


def running_loop_or_none() -> asyncio.AbstractEventLoop | None:
    """The running loop of this thread, or None (as ``asyncio._get_running_loop``)."""
    loop = _LOOPS.get(get_ident())
    if loop is None or not loop.is_running():
        loop = asyncio._get_running_loop()
        if loop is not None:
            _remember(loop)
    return loop


def _remember(loop: asyncio.AbstractEventLoop) -> None:
    if len(_LOOPS) > 64:  # threads that have ended: keep the table small
        _LOOPS.clear()
    _LOOPS[get_ident()] = loop


os.register_at_fork(after_in_child=_LOOPS.clear)
