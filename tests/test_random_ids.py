"""The ids drawn from the OS's random source in batches (access-token ``jti``, request id): their
shape, no repeats across a refill, and a forked child never hands out its parent's ids."""

from __future__ import annotations

import os
import re
from collections.abc import Callable

import pytest

from app.log import new_request_id
from app.oauth.access_token import new_token_id

IDS = [
    pytest.param(new_token_id, re.compile(r"[A-Za-z0-9_-]{22}"), id="access-token-jti"),
    pytest.param(new_request_id, re.compile(r"[0-9a-f]{24}"), id="request-id"),
]


@pytest.mark.parametrize(("make", "shape"), IDS)
def test_shape_and_no_repeats_across_refills(make: Callable[[], str], shape: re.Pattern[str]) -> None:
    ids = [make() for _ in range(3 * 256 + 7)]  # several refills of the 256-id pool
    assert all(shape.fullmatch(i) for i in ids), [i for i in ids if not shape.fullmatch(i)][:3]
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(("make", "shape"), IDS)
def test_forked_child_does_not_reuse_the_parents_pool(make: Callable[[], str], shape: re.Pattern[str]) -> None:
    make()  # the pool now holds 255 ids the parent has not handed out
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next 255 ids, then exit without running pytest's handlers
        try:
            os.write(write, ",".join(make() for _ in range(255)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split(",")
    os.waitpid(pid, 0)
    parent = [make() for _ in range(255)]
    assert len(child) == 255 and all(shape.fullmatch(i) for i in child)
    assert not set(child) & set(parent)
