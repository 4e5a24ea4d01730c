"""Rate limits for failed client authentication, per source address and per client.

RFC 6749 §10.10 asks the server to slow down credential guessing; the answer is 429 (RFC 6585
§4) with ``Retry-After`` and the ``slow_down`` error. The design keeps the success path free of
Redis round trips:

- only a failure counts: one Lua script call (INCR + PEXPIRE NX + PTTL per subject) on counters
  shared by all replicas (``FailureCounter``);
- when a count reaches the limit, the replica that saw it learns "blocked until T" from the reply
  and keeps it in a small in-process table (bounded; expired entries dropped);
- every request checks that table, with no I/O: the source address before parsing, the client as
  soon as the assertion's ``iss`` is known (before any key or signature work).

A replica that has not itself seen a count past the limit keeps answering until its own next
failure for that subject; that count answers "over the limit" and it blocks too. ``observe`` mode counts and logs but never blocks;
``off`` does nothing. A failure to count (Redis down) is logged and never changes the answer.
"""

from __future__ import annotations

import math
import time
from typing import Any

from app.oauth.errors import SlowDown
from app.store.base import FailureCounter, StoreUnavailable

MODES = ("enforce", "observe", "off")
MAX_BLOCKED = 10_000


class FailureLimiter:
    def __init__(
        self,
        counter: FailureCounter,
        *,
        limit: int,
        window: int,
        mode: str,
        log: Any,
        max_blocked: int = MAX_BLOCKED,
    ) -> None:
        assert mode in MODES, mode
        self._counter = counter
        self._limit = limit
        self._window_ms = window * 1000
        self._mode = mode
        self._log = log
        self._max_blocked = max_blocked
        # (kind, subject) -> monotonic deadline. The subjects themselves are the keys: checking
        # costs no hashing on the hot path; at most max_blocked entries, each an address or a
        # client_id no longer than an assertion.
        self._blocked: dict[tuple[str, str], float] = {}

    def check_address(self, address: str | None) -> None:
        if address is not None:
            self._check(("addr", address), "rate_limited_address")

    def check_client(self, client_id: str) -> None:
        self._check(("client", client_id), "rate_limited_client")

    def _check(self, subject: tuple[str, str], reason: str) -> None:
        if not self._blocked:
            return
        until = self._blocked.get(subject)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del self._blocked[subject]
            return
        raise SlowDown(reason, headers={"Retry-After": str(max(1, math.ceil(left)))})

    async def failed(self, address: str | None, client_id: str | None, request_id: str) -> None:
        """Count one failed authentication; learn any block the shared counters now impose."""
        if self._mode == "off":
            return
        subjects = [(kind, value) for kind, value in (("addr", address), ("client", client_id)) if value is not None]
        if not subjects:
            return
        try:
            results = await self._counter.hit(subjects, self._window_ms)
        except StoreUnavailable as exc:
            self._log.warning("ratelimit.count_failed", request_id=request_id, error=str(exc))
            return
        now = time.monotonic()
        for (kind, value), (count, ms_left) in zip(subjects, results, strict=True):
            if count < self._limit:
                continue
            if count == self._limit:  # once per window and key, on whichever replica crossed it
                self._log.warning(
                    "ratelimit.exceeded",
                    request_id=request_id,
                    mode=self._mode,
                    kind=kind,
                    **({"client_id": value} if kind == "client" else {"source": value}),
                    failures=count,
                    window=self._window_ms // 1000,
                )
            if self._mode == "enforce":
                self._remember((kind, value), now + ms_left / 1000)

    def _remember(self, subject: tuple[str, str], until: float) -> None:
        if subject not in self._blocked and len(self._blocked) >= self._max_blocked:
            now = time.monotonic()
            for s in [s for s, t in self._blocked.items() if t <= now]:
                del self._blocked[s]
            while len(self._blocked) >= self._max_blocked:  # oldest first; Redis still holds the count
                del self._blocked[next(iter(self._blocked))]
        self._blocked[subject] = until
