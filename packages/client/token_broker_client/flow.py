"""The client's token logic, written once and without I/O: ``TokenFlow``.

It keeps one client's tokens in memory per (scope, resource) until their jittered renewal point
(``renewal.py``), lets the callers that waited on one single flight share its outcome, runs the
shared-cache protocol between replicas (``shared_cache.py``) and makes token requests with a
fresh assertion each time. Everything that needs I/O is a generator yielding effects
(``effects.py``); ``SyncShell`` and ``AsyncShell`` (``shells.py``) hold the single-flight locks
and perform the effects.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import httpx

from token_broker_client.dpop import DPoPSession
from token_broker_client.effects import Flow, HttpCall, Sleep
from token_broker_client.errors import BrokerError, BrokerUnavailable
from token_broker_client.renewal import CachedToken, RenewalPolicy
from token_broker_client.responses import token_endpoint_from, token_from
from token_broker_client.shared_cache import CACHE_ERRORS, SharedCacheCommands, cache_slot, decode_entry
from token_broker_client.workload import AssertionSource
from token_broker_jose.assertion import ASSERTION_TYPE, MAX_LIFETIME, make_client_assertion
from token_broker_jose.constants import GRANT_CLIENT_CREDENTIALS, METADATA_PATH
from token_broker_jose.credentials import ClientKey

log = logging.getLogger("token_broker.client")

Key = tuple[str, str]  # (scope, resource); "" means the client's registered default


def scope_text(scope: str | Iterable[str] | None) -> str:
    """One spelling per set of scopes, so that "a b" and "b a" share a cached token."""
    items = scope.split() if isinstance(scope, str) else list(scope or ())
    return " ".join(sorted(set(items)))


@dataclass(frozen=True)
class Ticket:
    """What a caller found before waiting for the key's single-flight lock."""

    key: Key
    hit: CachedToken | None  # a fresh token: nothing to wait for
    seen: int  # token requests finished for the key when the caller arrived


class TokenFlow:
    """The tokens of one client of the broker, as flows over effects."""

    def __init__(self, issuer: str, client_id: str, key: ClientKey | AssertionSource, *, scope: str | Iterable[str] | None = None,
                 resource: str | None = None, token_endpoint: str | None = None, renewal: RenewalPolicy | None = None,
                 clock: Callable[[], float] = time.time, monotonic: Callable[[], float] = time.monotonic,
                 assertion_lifetime: int = MAX_LIFETIME, dpop: DPoPSession | None = None) -> None:
        self.issuer = issuer
        self.client_id = client_id
        self.key = key
        self.scope = scope_text(scope)
        self.resource = resource or ""
        self.token_endpoint = token_endpoint
        self.renewal = renewal or RenewalPolicy()
        self.clock = clock
        self._monotonic = monotonic  # the shared-cache wait deadline; immune to wall-clock steps
        self._assertion_lifetime = assertion_lifetime
        self._tokens: dict[Key, CachedToken] = {}
        self._attempts: dict[Key, int] = {}  # token requests finished, per key
        self._errors: dict[Key, BrokerError] = {}  # the last attempt's error, until one succeeds
        self._guard = threading.Lock()  # makes invalidate's compare-and-delete atomic across threads
        self.dpop = dpop
        # A DPoP-bound token is bound to this client's key: replicas share it only if they share the key.
        self._slot_key = dpop.key.jkt if dpop is not None else ""

    # -- the in-memory cache, outside any flow ----------------------------------------------------

    def key_for(self, scope: str | Iterable[str] | None, resource: str | None) -> Key:
        return (self.scope if scope is None else scope_text(scope), self.resource if resource is None else resource)

    def ticket(self, scope: str | Iterable[str] | None, resource: str | None) -> Ticket:
        key = self.key_for(scope, resource)
        return Ticket(key, self._fresh(key), self._attempts.get(key, 0))

    def _fresh(self, key: Key) -> CachedToken | None:
        cached = self._tokens.get(key)
        return cached if cached is not None and cached.fresh(self.clock()) else None

    # -- flows -------------------------------------------------------------------------------------

    def obtain(self, ticket: Ticket, cache: SharedCacheCommands | None) -> Flow[CachedToken]:
        """The token for ``ticket.key``; run while holding that key's single-flight lock."""
        key = ticket.key
        if (hit := self._fresh(key)) is not None:
            return hit  # the previous lock holder got it
        failed = self._errors.get(key)
        if failed is not None and self._attempts.get(key, 0) != ticket.seen:
            # This caller waited through a failed attempt: it shares that error instead of asking
            # the broker again (a wrong key must not become N requests).
            return self._fallback(key, copy.copy(failed))
        try:
            token = yield from (self._request(key) if cache is None else self._through_cache(key, cache))
        except BrokerError as exc:
            self._attempts[key] = self._attempts.get(key, 0) + 1
            self._errors[key] = exc
            return self._fallback(key, exc)
        self._attempts[key] = self._attempts.get(key, 0) + 1
        self._errors.pop(key, None)
        self._tokens[key] = token
        return token

    def invalidate(self, access_token: str, key: Key, cache: SharedCacheCommands | None) -> Flow[None]:
        """Forget ``access_token`` (a resource server refused it); a newer token is kept."""
        with self._guard:
            dropped = self._tokens.get(key)
            if dropped is None or dropped.access_token != access_token:
                return
            del self._tokens[key]
        if cache is not None:
            try:
                yield cache.discard(cache_slot(self.client_id, *key, self._slot_key), dropped)
            except CACHE_ERRORS:
                pass

    def _fallback(self, key: Key, exc: BrokerError) -> CachedToken:
        """Renewal failed: serve the old token while it is still valid (renewal is early on purpose)."""
        cached = self._tokens.get(key)
        if isinstance(exc, BrokerUnavailable) and cached is not None and cached.usable(self.clock()):
            log.warning("client.renewal_failed: client %s could not renew its token (%s); serving the cached one, "
                        "valid for %d s more", self.client_id, exc, cached.expires_at - self.clock(),
                        extra={"client_id": self.client_id, "error": exc.error})
            return cached
        raise exc

    def _request(self, key: Key) -> Flow[CachedToken]:
        """One token request with a new assertion; whatever the answer, it is never sent again (the
        one ``use_dpop_nonce`` retry is a new request: new assertion, new proof)."""
        url = self.issuer + METADATA_PATH
        try:
            if self.token_endpoint is None:
                metadata = yield HttpCall("GET", url)
                self.token_endpoint = token_endpoint_from(metadata, self.issuer)
            url = self.token_endpoint
            started = self.clock()
            response = yield self._token_call(url, key)
            if self.dpop is not None and self.dpop.retry_token_request(url, response):
                # RFC 9449 §8: once, with the nonce the broker just sent (a new assertion and proof).
                response = yield self._token_call(url, key)
                self.dpop.observe(url, response)
        except httpx.HTTPError as exc:
            raise BrokerUnavailable("unreachable", description=f"could not reach {url}: {type(exc).__name__}") from None
        return token_from(response, client_id=self.client_id, scope=key[0], started=started, policy=self.renewal,
                          token_type="Bearer" if self.dpop is None else self.dpop.token_type)

    def _token_call(self, url: str, key: Key) -> HttpCall:
        """A token request; with DPoP on, a fresh proof for it (RFC 9449 §4.1)."""
        return HttpCall("POST", url, self._form(key), None if self.dpop is None else self.dpop.headers("POST", url))

    def _form(self, key: Key) -> dict[str, str]:
        """The token request body (RFC 6749 §4.4.2, RFC 7523 §2.2, RFC 8707 §2)."""
        if isinstance(self.key, AssertionSource):  # the platform's token (workload.py), with our client_id
            form = {"grant_type": GRANT_CLIENT_CREDENTIALS, "client_assertion_type": self.key.assertion_type,
                    "client_assertion": self.key.client_assertion(self.clock()), "client_id": self.client_id}
        else:
            assertion = make_client_assertion(
                self.key.key, client_id=self.client_id, issuer=self.issuer, alg=self.key.alg, kid=self.key.kid,
                lifetime=self._assertion_lifetime, now=self.clock(),
            )
            form = {"grant_type": GRANT_CLIENT_CREDENTIALS, "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": assertion}
        if key[0]:
            form["scope"] = key[0]
        if key[1]:
            form["resource"] = key[1]
        return form

    # -- the shared cache between replicas --------------------------------------------------------

    def _through_cache(self, key: Key, cache: SharedCacheCommands) -> Flow[CachedToken]:
        """Adopt the token another replica stored, or ask the broker as the lock holder; ask it
        directly when the holder is slow or gone, or Redis fails."""
        slot = cache_slot(self.client_id, *key, self._slot_key)
        try:
            turn = yield from self._wait_turn(cache, slot)
        except CACHE_ERRORS:
            turn = None
        if isinstance(turn, CachedToken):
            return turn
        if turn is None:
            return (yield from self._request(key))
        try:
            return (yield from self._fill(key, cache, slot))
        finally:
            try:
                yield cache.unlock(slot, turn)
            except CACHE_ERRORS:
                pass

    def _wait_turn(self, cache: SharedCacheCommands, slot: str) -> Flow[CachedToken | str | None]:
        """A fresh stored token, the owner value of the lock we took, or None after ``cache.wait``."""
        deadline = self._monotonic() + cache.wait
        while True:
            entry = decode_entry((yield cache.read(slot)))
            if entry is not None and entry.fresh(self.clock()):
                return entry
            owner, take = cache.lock(slot)
            if (yield take):
                return owner
            if self._monotonic() >= deadline:
                return None
            yield Sleep(cache.poll)

    def _fill(self, key: Key, cache: SharedCacheCommands, slot: str) -> Flow[CachedToken]:
        """As the lock holder: get a token from the broker and store it for the other replicas."""
        try:  # another replica may have stored it between our read and our lock
            entry = decode_entry((yield cache.read(slot)))
        except CACHE_ERRORS:
            entry = None
        if entry is not None and entry.fresh(self.clock()):
            return entry
        token = yield from self._request(key)
        try:
            yield cache.write(slot, token, self.clock())
        except CACHE_ERRORS:
            pass
        return token
