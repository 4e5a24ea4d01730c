"""``app.aio``: the running loop without ``getpid`` on every call, and still always the right one
(a new loop after ``asyncio.run`` ends, another thread's loop, none outside a loop)."""

from __future__ import annotations

import asyncio
import threading

import pytest

from app.aio import running_loop, running_loop_or_none


async def _both() -> tuple[bool, bool]:
    loop = asyncio.get_running_loop()
    return running_loop() is loop, running_loop_or_none() is loop


def test_each_asyncio_run_gets_its_own_loop() -> None:
    for _ in range(3):  # a remembered loop that has ended is never handed out again
        assert asyncio.run(_both()) == (True, True)


def test_outside_a_loop() -> None:
    asyncio.run(_both())  # this thread remembers a loop that has ended
    assert running_loop_or_none() is None
    with pytest.raises(RuntimeError):
        running_loop()


def test_threads_get_their_own_loops() -> None:
    results: list[tuple[bool, bool]] = []
    started, release = threading.Barrier(3), threading.Event()

    async def held() -> tuple[bool, bool]:
        started.wait()  # both loops run at the same time
        release.wait(10)
        return await _both()

    threads = [threading.Thread(target=lambda: results.append(asyncio.run(held()))) for _ in range(2)]
    for t in threads:
        t.start()
    started.wait()
    release.set()
    for t in threads:
        t.join()
    assert results == [(True, True), (True, True)]
