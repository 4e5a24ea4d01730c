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

- only a failure counts: one Lua script call (INCR + PEXPIRE NX + PTTL per subject, SET NX PX of
  the marker first for a client) on counters shared by all replicas (``FailureCounter``);
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

import math
import time
from typing import Any

import msgspec

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
        ``signed`` says its key holder caused it (module docstring); learn any block that follows."""
        if self._mode == "off":
            return
        subjects: list[tuple[str, str, str | None]] = []
        if address is not None:
            subjects.append(("addr", address, None))
        if signed is not None and (signed.expired_for is None or signed.expired_for < self._window):
            subjects.append(("client", signed.client_id, signed.signed_hash))
        if not subjects:
            return
        try:
            results = await self._counter.hit(subjects, self._window_ms)
        except StoreUnavailable as exc:
            self._log.warning("ratelimit.count_failed", request_id=request_id, error=str(exc))
            return
        now = time.monotonic()
        for (kind, value, _), (count, ms_left) in zip(subjects, results, strict=True):
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
