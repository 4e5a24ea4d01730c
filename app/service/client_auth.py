"""private_key_jwt client authentication (RFC 7523 §2.2, §3; RFC 10070): the one path of every
endpoint a client authenticates at (the token endpoint, RFC 7009 revocation, RFC 7662
introspection).

``ClientAuthenticator.run`` serves one request to such an endpoint, in this order:

1. refuse a source address the rate limiter has blocked (an in-process table: no I/O);
2. parse the form (the endpoint's ``parse``);
3. parse the assertion and find the client it names; refuse a client blocked for failures its own
   key signed before any key or signature work; verify the assertion against that client's keys
   and the claim rules. Every path past the client look-up does one signature verification: an
   unknown or disabled client is checked against a decoy key first (``DecoyKeys``), so the time
   of the answer does not tell which clients exist;
4. record the jti (the endpoint's ``record``; fails closed: no answer → 503). Revocation and
   introspection use ``first_use`` (one ``SET NX PX GET``); the token endpoint records it in the
   same Lua script call that reads its token cache (``app.store.token_cache``), so that endpoint
   still costs one Redis round trip;
5. the endpoint's ``answer``.

A client's compat profile (``app.oauth.clients.CompatProfile``, set by the operator) changes three
things here: the assertion rules it relaxes (``verify_assertion``), how long its replay records
live (its own lifetime cap + leeway + skew), and, with ``assertion_reuse``, the replay record
(``Authenticated.reuse``: the SHA-256 of the whole assertion, so the same assertion may come back
until its ``exp`` while another with the same jti stays a replay), still in the one Redis call of
step 4. Every use of a compat feature is logged (``client_auth.compat_used``) and counted
(``broker_client_compat_used_total``). A client without a profile pays a few attribute tests.

Whatever step refuses the request, the refusal is logged as ``<event>.rejected``, a failed client
authentication (``invalid_client``) counts toward the source address's rate limit, and toward the
client's only when the client's key signed the refused assertion for this broker
(``SignedAssertionRefused``; ``app.service.ratelimit`` says why), and a store that cannot answer
becomes 503 ``temporarily_unavailable`` with ``Retry-After`` (logged as
``<event>.store_unavailable``). Endpoints implement none of this themselves.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

import msgspec

from app import tracing
from app.config import Settings
from app.oauth.assertion import (
    ASSERTION_REUSE,
    AssertionPolicy,
    DecoyKeys,
    ParsedAssertion,
    SignedAssertionRefused,
    VerifiedAssertion,
    jti_hash,
    parse_assertion,
    verify_assertion,
)
from app.oauth.clients import Client
from app.oauth.errors import InvalidClient, OAuthError, TemporarilyUnavailable
from app.oauth.federation import SPIFFE_ASSERTION_TYPE, FederatedIdentity, replay_jti, route
from app.service.directory import ClientDirectory
from app.service.federation import FederationService, federation_log_fields
from app.service.ratelimit import FailureLimiter, KeyHolderFailure
from app.store.base import REPLAYED, REUSED, ReplayGuard, StoreUnavailable


class EndpointRequest(msgspec.Struct, frozen=True):
    """One POST to a client-authenticated endpoint, as the web layer read it (built once)."""

    body: bytes
    content_type: str | None
    has_authorization: bool
    request_id: str
    #: The peer's address: the rate limiter's per-source key.
    source: str | None
    #: The values of the request's ``DPoP`` headers (RFC 9449 §4.1), in order; the token endpoint reads them.
    dpop: tuple[str, ...] = ()


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
    """A client whose assertion verified (step 3); ``replay_ttl_ms`` is for recording its jti."""

    client: Client
    assertion: VerifiedAssertion
    jti_hash: str
    replay_ttl_ms: int
    #: SHA-256 (hex) of the whole assertion when the client may re-send it (compat
    #: ``assertion_reuse``) and it has not expired; the jti is then recorded with it.
    reuse: str | None = None
    #: The workload whose token authenticated the client (workload identity federation), or None.
    federation: FederatedIdentity | None = None

    @property
    def client_id(self) -> str:
        return self.client.client_id


class FirstUse(msgspec.Struct, frozen=True):
    """The verdict of a plain jti record (``ClientAuthenticator.first_use``)."""

    #: Accepted: the first use, or an allowed reuse of the same assertion.
    first_use: bool
    reused: bool = False


_FIRST_USE = FirstUse(True)
_REUSED = FirstUse(True, True)
_REPLAYED = FirstUse(False)


class _Form(Protocol):
    """The client-authentication parameters every endpoint's form carries (RFC 7521 §4.2)."""

    @property
    def client_assertion(self) -> str: ...

    @property
    def client_id(self) -> str | None: ...

    @property
    def assertion_type(self) -> str: ...


class _Verdict(Protocol):
    @property
    def first_use(self) -> bool: ...

    @property
    def reused(self) -> bool: ...


F = TypeVar("F", bound=_Form)
R = TypeVar("R", bound=_Verdict)
T = TypeVar("T")


class Endpoint(Protocol[F, R, T]):
    """What an endpoint supplies to ``ClientAuthenticator.run``."""

    #: Prefix of the endpoint's log events (``token``, ``revocation``, ``introspection``).
    event: str

    def parse(self, body: bytes, content_type: str | None, *, has_authorization: bool) -> F: ...

    async def record(self, auth: Authenticated, form: F, request_id: str) -> R:
        """Record the assertion's jti (step 4); may return more than the verdict."""
        ...

    async def answer(self, auth: Authenticated, form: F, recorded: R, now: float, request_id: str) -> T: ...


class ClientAuthenticator:
    def __init__(
        self,
        settings: Settings,
        *,
        directory: ClientDirectory,
        replay: ReplayGuard,
        limiter: FailureLimiter,
        log: Any,
        clock: Callable[[], float] = time.time,
        federation: FederationService | None = None,
    ) -> None:
        self._policy = assertion_policy(settings)
        self._federation = federation
        self._route = route if federation is not None else None
        # Built once (key generation is slow); used only on refusals.
        self._decoys = DecoyKeys(self._policy.algs)
        self._directory = directory
        self._replay = replay
        self._limiter = limiter
        self._log = log
        self._clock = clock
        self._retry_after = str(settings.retry_after)
        # Replay records outlive the assertion by leeway + skew, never less than 1 s.
        self._ttl_pad = settings.leeway + settings.clock_skew
        self._leeway = settings.leeway
        self._ttl_max = settings.assertion_max_lifetime + self._ttl_pad

    async def run(self, endpoint: Endpoint[F, R, T], request: EndpointRequest) -> T:
        """Steps 1-5 (module docstring); raises the ``OAuthError`` to answer with."""
        request_id = request.request_id
        client_id: str | None = None  # for the logs and the per-client limit, once the assertion names it
        digest: str | None = None
        federated: dict[str, str] = {}  # a workload token's issuer and sub, for the logs
        try:
            self._limiter.check_address(request.source)
            now = self._clock()
            form = endpoint.parse(request.body, request.content_type, has_authorization=request.has_authorization)
            parsed = parse_assertion(form.client_assertion, self._policy, self._route)
            auth = None
            if parsed.route is not None:
                federated = federation_log_fields(parsed)
                auth = await self._federated(parsed, form, now)
                if auth is None:  # not a trusted issuer's, iss == sub: the private_key_jwt rules decide
                    federated = {}
                    parsed = parse_assertion(form.client_assertion, self._policy)
            if auth is None:
                if form.assertion_type == SPIFFE_ASSERTION_TYPE:  # a private_key_jwt assertion is no JWT-SVID
                    raise InvalidClient("federation_type_mismatch")
                client_id = parsed.client_id
                if tracing.on:
                    tracing.client(client_id)
                auth = await self._verify(parsed, form.client_id, now, request_id)
            client_id = auth.client_id
            digest = auth.jti_hash
            recorded = await endpoint.record(auth, form, request_id)
            if not recorded.first_use:
                self._log.warning("replay.rejected", request_id=request_id, client_id=client_id, jti_hash=digest,
                                  reason="jti_replayed", source=request.source, **federated)
                raise InvalidClient("jti_replayed")
            if auth.federation is not None:
                self._count_federated(auth, recorded.reused)
            elif auth.reuse is not None and recorded.reused:
                self._directory.compat_used(client_id, ASSERTION_REUSE, request_id, jti_hash=digest)
            return await endpoint.answer(auth, form, recorded, now, request_id)
        except StoreUnavailable as exc:
            self._log.error(endpoint.event + ".store_unavailable", request_id=request_id, client_id=client_id,
                            error=str(exc), **federated)
            raise TemporarilyUnavailable("store_unavailable", headers={"Retry-After": self._retry_after}) from None
        except OAuthError as exc:
            self._log.info(endpoint.event + ".rejected", request_id=request_id, client_id=client_id, jti_hash=digest,
                           error=exc.error, reason=exc.reason, source=request.source, **federated,
                           **({"detail": exc.log_detail} if exc.log_detail is not None else {}))
            if isinstance(exc, InvalidClient):
                await self._limiter.failed(request.source, request_id, self._key_holder_failure(exc, client_id))
            raise

    async def _federated(self, parsed: ParsedAssertion, form: _Form, now: float) -> Authenticated | None:
        """A workload token (``app.service.federation``): verified, mapped, and its replay record
        chosen by its issuer's policy: the token's own jti once, or the token itself until exp."""
        assert self._federation is not None
        found = await self._federation.authenticate(parsed, form.client_id, form.assertion_type, now)
        if found is None:
            return None
        verified, issuer = found.verified, found.issuer
        client_id = verified.client_id
        self._limiter.check_client(client_id)
        if tracing.on:
            tracing.client(client_id)
        jti = replay_jti(issuer.issuer, verified, issuer.single_use)
        # The record outlives the token (leeway + skew). Capped only by what the checks allow: exp -
        # iat <= max_lifetime with iat up to leeway ahead, so exp - now <= max_lifetime + leeway
        # (without that leeway, a token issued ahead outlived its record: a single_use replay).
        ttl = min(max(verified.exp + self._ttl_pad - now, 1.0), issuer.max_lifetime + self._leeway + self._ttl_pad)
        return Authenticated(found.client, VerifiedAssertion(client_id, jti, verified.exp, verified.kid),
                             jti_hash(client_id, jti), int(ttl * 1000),
                             None if issuer.single_use else verified.digest, verified.identity)

    def _count_federated(self, auth: Authenticated, reused: bool) -> None:
        assert self._federation is not None and auth.federation is not None
        use = "single_use" if auth.reuse is None else "reuse" if reused else "first"
        self._federation.counted(auth.federation.iss, auth.client_id, use)

    def _key_holder_failure(self, exc: InvalidClient, client_id: str | None) -> KeyHolderFailure | None:
        """What the limiter counts toward the client: only a refusal of an assertion the client's
        own key signed for this broker (anyone can name a client; see ``app.service.ratelimit``)."""
        if not isinstance(exc, SignedAssertionRefused) or client_id is None:
            return None
        return KeyHolderFailure(client_id, exc.signed_hash, None if exc.exp is None else self._clock() - exc.exp)

    async def first_use(self, auth: Authenticated, form: _Form, request_id: str) -> FirstUse:
        """Step 4 for an endpoint that records nothing else: one ``SET NX PX GET`` (one script call
        for a client allowed to reuse its assertion)."""
        if auth.reuse is not None:
            verdict = await self._replay.record_reusable(auth.client_id, auth.assertion.jti, request_id,
                                                         auth.replay_ttl_ms, auth.reuse)
            return _REPLAYED if verdict == REPLAYED else _REUSED if verdict == REUSED else _FIRST_USE
        first = await self._replay.first_use(auth.client_id, auth.assertion.jti, request_id, auth.replay_ttl_ms)
        return _FIRST_USE if first else _REPLAYED

    async def _verify(self, parsed: ParsedAssertion, client_id_param: str | None, now: float,
                      request_id: str) -> Authenticated:
        client_id = parsed.client_id
        self._limiter.check_client(client_id)  # before any key or signature work
        if client_id_param is not None and client_id_param != client_id:
            raise InvalidClient("client_id_mismatch")
        client = await self._directory.get(client_id, parsed.header.get("kid"))
        if client is None or not client.record.enabled:
            self._decoys.spend(parsed)  # the same signature work as a known client's bad signature
            raise InvalidClient("client_unknown" if client is None else "client_disabled")
        verified = verify_assertion(parsed, client, self._policy, now, self._decoys)
        if verified.legacy_aud:
            self._directory.legacy_aud_accepted(client_id, request_id)
        for feature in verified.compat:
            self._directory.compat_used(client_id, feature, request_id)
        ttl = max(verified.exp + self._ttl_pad - now, 1.0)
        compat = client.record.compat
        if compat is None:
            return Authenticated(client, verified, jti_hash(client_id, verified.jti), int(min(ttl, self._ttl_max) * 1000))
        # The client's own lifetime cap bounds its records instead (the record must outlive the assertion).
        ttl_max = self._ttl_max if compat.assertion_max_lifetime is None else compat.assertion_max_lifetime + self._ttl_pad
        reuse = None
        if compat.assertion_reuse and now < verified.exp:  # past exp (inside the leeway): first use only
            reuse = hashlib.sha256(parsed.signing_input + b"." + parsed.signature).hexdigest()
        return Authenticated(client, verified, jti_hash(client_id, verified.jti), int(min(ttl, ttl_max) * 1000), reuse)
