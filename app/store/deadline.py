"""The hard deadline of a store call, one timer per event loop instead of one per call.

``asyncio.timeout`` costs a timer handle on the loop's heap, the current-task lookup and a small
state machine per call: on the token endpoint (one or two store calls a request) it was ≈ 5% of a
request's CPU (py-spy, docs/performance.md). Here a call in flight is one dict entry; one timer,
armed only while a call is in flight, looks every ``TICK`` seconds for calls past their deadline
and cancels their task, and ``leave`` tells a deadline's cancellation (the call timed out) from
anybody else's (it propagates), exactly as ``asyncio.timeout`` does (``Task.uncancel``). A call
ends at most ``TICK`` after its deadline; the store's deadlines are a few hundred milliseconds.
"""

from __future__ import annotations

import asyncio
from typing import Any

from app.aio import running_loop

#: Seconds between two looks at the calls in flight (only while there are some).
TICK = 0.01


class Call:
    __slots__ = ("when", "task", "cancelling", "expired")

    def __init__(self, when: float, task: asyncio.Task[Any]) -> None:
        self.when = when
        self.task = task
        self.cancelling = task.cancelling()  # cancellations already requested when the call began
        self.expired = False


class Deadlines:
    """The calls in flight on one event loop (``for_loop``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._calls: dict[int, Call] = {}
        self._armed = False

    def enter(self, seconds: float) -> Call:
        task = asyncio.current_task(self._loop)
        if task is None:
            raise RuntimeError("a store call runs inside a task")
        call = Call(self._loop.time() + seconds, task)
        self._calls[id(call)] = call
        if not self._armed:
            self._armed = True
            self._loop.call_at(self._loop.time() + TICK, self._tick)
        return call

    def leave(self, call: Call, cancelled: bool) -> bool:
        """Forget ``call``; True when its deadline cancelled it (``cancelled``: the call ended in
        ``CancelledError``), which the caller turns into its timeout error."""
        del self._calls[id(call)]
        if not call.expired:
            return False
        # Our cancel() is spent: take it back, so a cancellation requested by anybody else still counts.
        return call.task.uncancel() <= call.cancelling and cancelled

    def _tick(self) -> None:
        now = self._loop.time()
        for call in self._calls.values():
            if call.when <= now and not call.expired:
                call.expired = True
                call.task.cancel()
        if self._calls:
            self._loop.call_at(now + TICK, self._tick)
        else:
            self._armed = False


_BY_LOOP: dict[int, Deadlines] = {}


def for_loop() -> Deadlines:
    """The running loop's ``Deadlines`` (a test suite runs many loops one after another)."""
    loop = running_loop()
    found = _BY_LOOP.get(id(loop))
    if found is None or found._loop is not loop:
        if len(_BY_LOOP) > 64:  # loops that have ended: keep the table small
            _BY_LOOP.clear()
        found = _BY_LOOP[id(loop)] = Deadlines(loop)
    return found
