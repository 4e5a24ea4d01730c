"""Rate limits for failed client authentication, per source address and per client.

RFC 6749 §10.10 asks the server to slow down credential guessing; the answer is 429 (RFC 6585
§4) with ``Retry-After`` and the ``slow_down`` error.

What counts toward which limit. Client ids are public (every access token carries one), so a
failure that anyone could cause must never block the client it names:

- every failed authentication counts toward the source address;
- a failure counts toward the client only when the client's own key signed the refused assertion
  for this broker (``aud`` named it) and a claim rule refused it (``KeyHolderFailure``: expired,
  lifetime too long, ``iat``/``nbf`` in the future, bad ``jti``...). Forged assertions (bad
  signature, unknown kid or alg, unknown or disabled client, malformed), assertions made for
  another audience (their recipient could forward them) and replayed jtis count toward the
  address only;
- whoever saw a signed assertion can send it again, so each signed content counts toward the
  client once per window (a marker in Redis), and an expired one only during the window after
  its ``exp``: a captured assertion adds at most one failure, ever, to its client's count.

The admin client follows the same rules: without its key nobody can make a failure count
against it.

The design keeps the success path free of Redis round trips:

- only a failure counts: one Lua script call (INCRBY + PEXPIRE NX + PTTL per subject, SET NX PX of
  the marker first for a client) on counters shared by all replicas (``FailureCounter``). The
  failures of every request refused in one pass of the event loop go in one call (``_Batch``),
  made by a task of its own: a flood of bad assertions or replays from one address costs one call
  per loop pass, not one per request, and a refused request that goes away (even the first)
  cancels nobody's count. Each refused request still waits for that call before its answer
  leaves;
- when a count reaches the limit, the replica that saw it learns "blocked until T" from the reply
  and keeps it in a small in-process table (one per kind, each bounded, expired entries dropped;
  the client table only ever holds registered clients whose key signed, so no caller-chosen
  ``iss`` fills it, and a flood of addresses cannot evict a client's entry);
- every request checks those tables, with no I/O: the source address before parsing, the client
  as soon as the assertion's ``iss`` is known (before any key or signature work).

A replica that has not itself seen a count past the limit keeps answering until its own next
failure for that subject; that count answers "over the limit" and it blocks too. ``observe`` mode
counts and logs but never blocks; ``off`` does nothing. A failure to count (Redis down) is logged
and never changes the answer.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import msgspec

from app.aio import running_loop
from app.oauth.errors import SlowDown
from app.store.base import FailureCounter, StoreUnavailable

MODES = ("enforce", "observe", "off")
MAX_BLOCKED = 10_000


class KeyHolderFailure(msgspec.Struct, frozen=True):
    """A refused assertion that the client's own key signed for this broker."""

    client_id: str
    #: SHA-256 of the signed content: counted once per window however often it is sent.
    signed_hash: str
    #: Seconds since the assertion's ``exp`` (negative: not yet expired); None without a valid ``exp``.
    expired_for: float | None


class _Batch:
    """The failures counted in one call: every request refused in one pass of the event loop
    (under a flood, many; a request alone, just its own). A subject refused several times goes up
    by that many in the one call; a signed content counts once (``once``) however often it came."""

    __slots__ = ("loop", "done", "task", "subjects", "amounts", "request_ids", "_index")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        #: Set when counted: None, or the exception the counter raised.
        self.done: asyncio.Future[BaseException | None] = loop.create_future()
        self.task: asyncio.Task[None] | None = None
        self.subjects: list[tuple[str, str, str | None]] = []
        self.amounts: list[int] = []
        #: The first request that named each subject: the one a ``ratelimit.exceeded`` line names.
        self.request_ids: list[str] = []
        self._index: dict[tuple[str, str, str | None], int] = {}

    def add(self, kind: str, value: str, once: str | None, request_id: str) -> None:
        subject = (kind, value, once)
        i = self._index.get(subject)
        if i is None:
            self._index[subject] = len(self.subjects)
            self.subjects.append(subject)
            self.amounts.append(1)
            self.request_ids.append(request_id)
        elif once is None:
            self.amounts[i] += 1


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
        self._window = window
        self._window_ms = window * 1000
        self._mode = mode
        self._log = log
        self._max_blocked = max_blocked
        # subject -> monotonic deadline, one table per kind. The subjects themselves are the
        # keys: checking costs no hashing on the hot path; at most max_blocked entries each.
        self._addresses: dict[str, float] = {}
        self._clients: dict[str, float] = {}
        self._tables = {"addr": self._addresses, "client": self._clients}
        self._batch: _Batch | None = None

    def check_address(self, address: str | None) -> None:
        if address is not None:
            self._check(self._addresses, address, "rate_limited_address")

    def check_client(self, client_id: str) -> None:
        self._check(self._clients, client_id, "rate_limited_client")

    def _check(self, table: dict[str, float], subject: str, reason: str) -> None:
        if not table:
            return
        until = table.get(subject)
        if until is None:
            return
        left = until - time.monotonic()
        if left <= 0:
            del table[subject]
            return
        raise SlowDown(reason, headers={"Retry-After": str(max(1, math.ceil(left)))})

    async def failed(self, address: str | None, request_id: str, signed: KeyHolderFailure | None = None) -> None:
        """Count one failed authentication toward the address, and toward the client when
        ``signed`` says its key holder caused it (module docstring); learn any block that follows.

        Returns once the failure is counted (or the count failed): a request's refusal never
        leaves before its failure is in the shared count."""
        if self._mode == "off":
            return
        if signed is not None and signed.expired_for is not None and signed.expired_for >= self._window:
            signed = None  # expired for longer than a window: it counts toward the address only
        if address is None and signed is None:
            return
        batch = self._batch
        loop = running_loop()
        if batch is None or batch.loop is not loop:
            batch = self._batch = _Batch(loop)
            # its first step runs after this loop pass; the batch, which every waiting request
            # holds, keeps a strong reference to it (the loop's own is weak)
            batch.task = loop.create_task(self._count(batch))
        if address is not None:
            batch.add("addr", address, None, request_id)
        if signed is not None:
            batch.add("client", signed.client_id, signed.signed_hash, request_id)
        # shield: a request that goes away does not cancel the count the others wait for
        error = await asyncio.shield(batch.done)
        if error is not None:
            if not isinstance(error, StoreUnavailable):
                raise error
            self._log.warning("ratelimit.count_failed", request_id=request_id, error=str(error))

    async def _count(self, batch: _Batch) -> None:
        """One counter call for every failure of one loop pass (``_Batch``); sets ``batch.done``."""
        if self._batch is batch:
            self._batch = None  # failures from now on make the next batch
        error: BaseException | None = None
        try:  # the batch is never empty: the request that made it added its subjects at once
            self._learn(batch, await self._counter.hit(batch.subjects, self._window_ms, batch.amounts))
        except Exception as exc:  # StoreUnavailable is logged by each request; anything else raised there
            error = exc
        finally:  # only here, once: cancelled too, the waiting requests go on
            batch.done.set_result(error)

    def _learn(self, batch: _Batch, results: list[tuple[int, int]]) -> None:
        now = time.monotonic()
        for (kind, value, _), amount, request_id, (count, ms_left) in zip(
                batch.subjects, batch.amounts, batch.request_ids, results, strict=True):
            if count < self._limit:
                continue
            if count - amount < self._limit:  # this call crossed it: once per window and key, on one replica
                self._log.warning(
                    "ratelimit.exceeded",
                    request_id=request_id,
                    mode=self._mode,
                    kind=kind,
                    **({"client_id": value} if kind == "client" else {"source": value}),
                    failures=count,
                    window=self._window,
                )
            if self._mode == "enforce":
                self._remember(self._tables[kind], value, now + ms_left / 1000)

    def _remember(self, table: dict[str, float], subject: str, until: float) -> None:
        if subject not in table and len(table) >= self._max_blocked:
            now = time.monotonic()
            for s in [s for s, t in table.items() if t <= now]:
                del table[s]
            while len(table) >= self._max_blocked:  # oldest first; Redis still holds the count
                del table[next(iter(table))]
        table[subject] = until
