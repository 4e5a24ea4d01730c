"""private_key_jwt client authentication (RFC 7523 §2.2, §3; RFC 10070), shared by every endpoint.

The token endpoint, RFC 7009 revocation and RFC 7662 introspection authenticate a client through
this one path, in this order:

1. parse the assertion and find the client it names (``app.oauth.assertion``, directory);
2. verify the assertion against that client's keys and the claim rules (``verify``);
3. record the jti: one atomic ``SET NX PX GET`` (``consume``: fails closed, no answer → 503).

The token endpoint runs step 3 itself, pipelined with its cache read (one Redis round trip), and
hands the answer to ``check_first_use``; the other endpoints call ``authenticate`` (all three).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from app.config import Settings
from app.oauth.assertion import jti_hash
from app.oauth.assertion import AssertionPolicy, VerifiedAssertion, parse_assertion, verify_assertion
from app.oauth.clients import Client
from app.oauth.errors import InvalidClient
from app.service.directory import ClientDirectory
from app.store.base import ReplayGuard

if TYPE_CHECKING:
    from app.service.ratelimit import FailureLimiter


def assertion_policy(settings: Settings) -> AssertionPolicy:
    return AssertionPolicy(
        issuer=settings.issuer,
        algs=frozenset(settings.assertion_algs),
        leeway=settings.leeway,
        max_lifetime=settings.assertion_max_lifetime,
        max_age=settings.assertion_max_age,
        jti_max_length=settings.jti_max_length,
        assertion_max=settings.assertion_max,
        allow_single_element_aud_array=settings.allow_single_element_aud_array,
        token_endpoint=settings.token_endpoint,
    )


class Authenticated(msgspec.Struct, frozen=True):
    """A client whose assertion verified (steps 1-2); ``replay_ttl_ms`` is for step 3."""

    client: Client
    assertion: VerifiedAssertion
    jti_hash: str
    replay_ttl_ms: int

    @property
    def client_id(self) -> str:
        return self.client.client_id


class ClientAuthenticator:
    def __init__(
        self,
        settings: Settings,
        *,
        directory: ClientDirectory,
        replay: ReplayGuard,
        log: Any,
        clock: Callable[[], float] = time.time,
        limiter: FailureLimiter | None = None,
    ) -> None:
        self._policy = assertion_policy(settings)
        self._directory = directory
        self._replay = replay
        self._log = log
        self._clock = clock
        self.limiter = limiter
        # Replay records outlive the assertion by leeway + skew, never less than 1 s.
        self._ttl_pad = settings.leeway + settings.clock_skew
        self._ttl_max = settings.assertion_max_lifetime + self._ttl_pad

    async def verify(self, assertion: str, client_id_param: str | None, now: float, request_id: str,
                     on_client: Callable[[str], None] | None = None) -> Authenticated:
        """Steps 1-2. ``on_client`` learns the assertion's client_id as soon as it is parsed (logs)."""
        parsed = parse_assertion(assertion, self._policy)
        client_id = parsed.client_id
        if on_client is not None:
            on_client(client_id)
        if self.limiter is not None:  # before any key or signature work
            self.limiter.check_client(client_id)
        if client_id_param is not None and client_id_param != client_id:
            raise InvalidClient("client_id_mismatch")
        client = await self._directory.get(client_id, parsed.header.get("kid"))
        if client is None:
            raise InvalidClient("client_unknown")
        if not client.record.enabled:
            raise InvalidClient("client_disabled")
        verified = verify_assertion(parsed, client, self._policy, now)
        if verified.legacy_aud:
            self._directory.legacy_aud_accepted(client_id, request_id)
        ttl = min(max(verified.exp + self._ttl_pad - now, 1.0), self._ttl_max)
        return Authenticated(client, verified, jti_hash(client_id, verified.jti), int(ttl * 1000))

    def check_first_use(self, first_use: bool, auth: Authenticated, request_id: str) -> None:
        """Step 3's verdict, however it was obtained."""
        if not first_use:
            self._log.warning("replay.rejected", request_id=request_id, client_id=auth.client_id,
                              jti_hash=auth.jti_hash, reason="jti_replayed")
            raise InvalidClient("jti_replayed")

    async def authenticate(self, assertion: str, client_id_param: str | None, request_id: str,
                           on_client: Callable[[str], None] | None = None) -> Authenticated:
        """Steps 1-3 (revocation, introspection). ``StoreUnavailable`` propagates (→ 503)."""
        auth = await self.verify(assertion, client_id_param, self._clock(), request_id, on_client)
        first = await self._replay.first_use(auth.client_id, auth.assertion.jti, request_id, auth.replay_ttl_ms)
        self.check_first_use(first, auth, request_id)
        return auth
