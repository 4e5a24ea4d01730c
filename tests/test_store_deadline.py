"""The store call's hard deadline (``app.store.deadline``, used by ``RedisStore._run``): a call past
it fails as ``StoreUnavailable("TimeoutError")`` (so /token answers 503), anybody else's
cancellation still propagates, and the one timer stops when nothing is in flight.
The Redis fault tests (tests/test_redis_faults.py) check the same deadline against a real
redis-server that stops answering."""

from __future__ import annotations

import asyncio

import pytest

from app.metrics import Metrics
from app.store import deadline
from app.store.base import StoreUnavailable
from app.store.redis import RedisStore


def _store() -> RedisStore:
    return RedisStore(None, timeout=0.02, retries=0, metrics=Metrics())  # deadline 0.07 s


async def _forever() -> None:
    await asyncio.Event().wait()


def test_a_call_past_its_deadline_is_store_unavailable() -> None:
    async def main() -> None:
        with pytest.raises(StoreUnavailable) as err:
            await _store()._run(_forever(), op="replay")
        assert str(err.value) == "TimeoutError"
        assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]  # the deadline's cancel is taken back
        await asyncio.sleep(0)  # and the task goes on normally

    asyncio.run(main())


def test_a_call_that_answers_in_time_returns_its_value() -> None:
    async def answer() -> str:
        await asyncio.sleep(0)
        return "ok"

    async def main() -> list[str]:
        return await asyncio.gather(*(_store()._run(answer()) for _ in range(50)))

    assert asyncio.run(main()) == ["ok"] * 50


def test_somebody_elses_cancellation_propagates() -> None:
    async def main() -> None:
        started = asyncio.Event()

        async def call() -> None:
            started.set()
            await _forever()

        task = asyncio.create_task(_store()._run(call()))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_an_outer_timeout_stays_the_outer_timeout() -> None:
    """A caller's own shorter ``asyncio.timeout`` around a store call still raises TimeoutError."""

    async def main() -> None:
        store = RedisStore(None, timeout=5, retries=0)
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.01):
                await store._run(_forever())

    asyncio.run(main())


def test_the_timer_is_armed_only_while_calls_are_in_flight() -> None:
    async def main() -> tuple[bool, bool]:
        await _store()._run(asyncio.sleep(0))
        table = deadline.for_loop()
        busy = table._armed
        while table._armed:  # disarms at its next tick, with nothing in flight
            await asyncio.sleep(deadline.TICK)
        return busy, table._armed

    assert asyncio.run(main()) == (True, False)
