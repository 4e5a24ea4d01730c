"""In-process cache of prepared clients over the shared registry (RFC 7591 §2 metadata).

Parsing a client's keys costs far more than a token request may spend, so each replica keeps the
prepared ``Client`` objects and drops them all whenever the registry epoch (bumped by every
change through any replica) moves. Each replica polls the epoch every ``poll_interval`` seconds,
so a change made anywhere reaches every replica within that bound (default 0.25 s; the promise
is 1 s). A fetch that was in flight across an epoch change is not cached.

A cached client is also redone when its usable key set changes on its own: a key's ``nbf`` or
``exp`` passes, or the key set fetched from a ``jwks_uri`` reaches its cache TTL
(``Client.refresh_at``). For clients with registered ``jwks`` the hot path is one dict lookup and
no Redis call. An assertion naming a kid the cached client lacks re-reads that client's record
(at most once a second per client), so a key added through another replica works at once and a
rotation (add key → switch → remove old key) needs no waiting.

``jwks_uri`` clients (RFC 7591 §2): the validated set lives in Redis for
``jwks_uri_cache_ttl`` seconds, shared by replicas. An assertion naming a kid the set does not hold
triggers one refetch, at most once per ``jwks_uri_refetch_cooldown`` per client across all
replicas (a Redis ``SET NX PX`` marker, plus an in-process marker so a flood costs no Redis
call); concurrent misses in one process share one fetch. A fetched key that is registered for
another client (same RFC 7638 thumbprint) is dropped from the set and logged.

The same poll reads the registry's marker (one ``MGET`` of epoch and marker) and hands it to the
``RegistryWatch`` (``app.service.registry_state``). While the registry is lost every lookup
raises ``RegistryLost`` (a ``StoreUnavailable``: the endpoints answer 503 with Retry-After), so a
lost registry never turns into ``invalid_client`` for every client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import msgspec

from app.config import Settings
from app.metrics import CLIENT_COMPAT_USED
from app.metrics import LEGACY_AUD_ACCEPTED as LEGACY_AUD_METRIC
from app.oauth.clients import Client, ClientRecord, key_thumbprint, prepare_client, with_keys
from app.service.jwks_fetch import JwksFetchError, fetch_jwks, parse_fetched_jwks
from app.service.registry_state import RegistryWatch
from app.store.base import ClientRegistry, JwksUriCache, RecordUnreadable, RegistryLost, StoreUnavailable

#: Prepared clients kept per process (a deployment with more registered clients re-reads some).
MAX_CACHED = 10_000
#: client_ids the registry does not know, remembered so that repeats cost no Redis read. Kept apart
#: from the prepared clients and evicted oldest first: a flood of random ``iss`` values (anyone can
#: send them) pushes out only other unknown ids, never a real client.
MAX_UNKNOWN = 10_000
#: Unknown kid from a static client: re-read its record at most this often (seconds, per client).
STATIC_RELOAD_INTERVAL = 1.0
_MISS = object()


class _CachedSet(msgspec.Struct):
    fetched_at: float
    keys: list[dict[str, Any]]


_set_decoder = msgspec.json.Decoder(_CachedSet)


class JwksUriPolicy(msgspec.Struct, frozen=True, kw_only=True):
    allow_http_loopback: bool = False
    cache_ttl: int = 300
    refetch_cooldown: float = 10.0
    timeout: float = 2.0
    #: How long after its last successful fetch a key set is still used while fetches fail.
    max_stale: float = 3600.0

    def expired(self, fetched_at: float | None, now: float) -> bool:
        """Whether keys fetched at ``fetched_at`` (None: not fetched, never stale) may no longer be kept
        while fetches fail: whoever can block the broker's fetches must not keep a withdrawn key working."""
        return fetched_at is not None and now - fetched_at >= self.max_stale


def jwks_uri_policy(settings: Settings) -> JwksUriPolicy:
    """The ``BROKER_JWKS_URI_*`` settings, for client ``jwks_uri`` sets and trusted issuers' keys."""
    return JwksUriPolicy(allow_http_loopback=settings.jwks_uri_allow_http_loopback, cache_ttl=settings.jwks_uri_cache_ttl,
                         refetch_cooldown=settings.jwks_uri_refetch_cooldown, timeout=settings.jwks_uri_timeout,
                         max_stale=settings.jwks_uri_max_stale)


class ClientDirectory:
    def __init__(
        self,
        registry: ClientRegistry,
        *,
        poll_interval: float,
        log: Any,
        clock: Callable[[], float] = time.time,
        jwks_cache: JwksUriCache | None = None,
        jwks_policy: JwksUriPolicy | None = None,
        metrics: Any = None,
        watch: RegistryWatch | None = None,
    ) -> None:
        self._registry = registry
        self._watch = watch
        self._poll_interval = poll_interval
        self._log = log
        self._clock = clock
        self._cache: dict[str, Client] = {}
        self._unknown: dict[str, None] = {}  # insertion-ordered: the first key is the oldest
        self._generation = 0
        self._epoch: int | None = None
        self._jwks_cache = jwks_cache
        self._policy = jwks_policy or JwksUriPolicy()
        self._metrics = metrics
        self._inflight: dict[str, asyncio.Future[Client]] = {}
        self._last_refetch: dict[str, float] = {}
        self._last_reload: dict[str, float] = {}

    async def get(self, client_id: str, kid: str | None = None) -> Client | None:
        """The client, with the keys usable now; ``kid`` unknown to a jwks_uri client → maybe refetch.

        Raises ``RegistryLost`` while the registry is lost (``StoreUnavailable`` when Redis fails)."""
        if self._watch is not None and self._watch.lost:  # two attribute reads on the hot path
            raise RegistryLost("registry_lost")
        client = self._cache.get(client_id, _MISS)
        if client is not _MISS:
            assert isinstance(client, Client)
            if (kid is None or kid in client.keys) and client.refresh_at > self._clock():
                return client
            return await self._redo(client, kid)
        if client_id in self._unknown:
            return None
        generation = self._generation
        record = await self._load(client_id)
        prepared = None
        if record is not None:
            try:
                prepared = prepare_client(record, self._clock())
            except Exception as exc:  # a stored key that no longer parses: unusable, loudly
                self._log.error("client.keys_unusable", client_id=client_id, error=type(exc).__name__)
            if prepared is not None and record.jwks_uri is not None:
                prepared = await self._remote_keys(prepared, refetch=False)
                if kid is not None and kid not in prepared.keys:
                    prepared = await self._maybe_refetch(prepared)
        self._store(client_id, prepared, generation)
        return prepared

    async def _redo(self, client: Client, kid: str | None) -> Client:
        generation = self._generation
        now = self._clock()
        if client.record.jwks_uri is None:
            record = client.record
            if kid is not None and kid not in client.keys:
                # A kid added through another replica moments ago: re-read the record now instead
                # of waiting for the epoch poll, so a client may switch right after add-key.
                # Bounded to one read per client per STATIC_RELOAD_INTERVAL.
                last = self._last_reload.get(client.client_id, -1e18)
                if now - last < STATIC_RELOAD_INTERVAL:
                    return client
                self._last_reload[client.client_id] = now
                if len(self._last_reload) > MAX_CACHED:
                    self._last_reload.clear()
                loaded = await self._load(client.client_id)
                if loaded is None:
                    self._store(client.client_id, None, generation)
                    return client
                record = loaded
                if record.jwks_uri is not None:  # switched to a jwks_uri meanwhile
                    return await self._redo(prepare_client(record, now), kid)
            try:
                fresh = prepare_client(record, now)
            except Exception as exc:
                self._log.error("client.keys_unusable", client_id=client.client_id, error=type(exc).__name__)
                return client
        else:
            fresh = client
            if client.refresh_at <= now:
                fresh = await self._remote_keys(client, refetch=False)
            if kid is not None and kid not in fresh.keys:
                fresh = await self._maybe_refetch(fresh)
        self._store(client.client_id, fresh, generation)
        return fresh

    async def _load(self, client_id: str) -> ClientRecord | None:
        try:
            return await self._registry.get(client_id)
        except RecordUnreadable:  # written by something else: unusable, loudly, never a 500
            self._log.error("client.record_unreadable", client_id=client_id)
            return None

    def _store(self, client_id: str, client: Client | None, generation: int) -> None:
        if generation != self._generation:
            return
        if client is None:
            self._cache.pop(client_id, None)
            if len(self._unknown) >= MAX_UNKNOWN:
                del self._unknown[next(iter(self._unknown))]
            self._unknown[client_id] = None
            return
        self._unknown.pop(client_id, None)
        if len(self._cache) >= MAX_CACHED:
            self._cache.clear()
        self._cache[client_id] = client

    # -- jwks_uri ----------------------------------------------------------------------------

    async def _maybe_refetch(self, client: Client) -> Client:
        """Unknown kid: one refetch per client per cooldown, shared by every replica."""
        cid = client.client_id
        uri = client.record.jwks_uri
        assert uri is not None
        now = self._clock()
        if now - self._last_refetch.get(cid, -1e18) < self._policy.refetch_cooldown:
            return client
        self._last_refetch[cid] = now
        if len(self._last_refetch) > MAX_CACHED:
            self._last_refetch.clear()
        if self._jwks_cache is not None:
            try:
                claimed = await self._jwks_cache.claim_refetch(cid, uri, int(self._policy.refetch_cooldown * 1000))
            except StoreUnavailable:
                return client
            if not claimed:
                # Another replica refetched in this interval: take what it stored.
                return await self._remote_keys(client, refetch=False, fetch_on_miss=False)
        return await self._remote_keys(client, refetch=True)

    async def _remote_keys(self, client: Client, *, refetch: bool, fetch_on_miss: bool = True) -> Client:
        cid = client.client_id
        uri = client.record.jwks_uri
        assert uri is not None
        if not refetch and self._jwks_cache is not None:
            try:
                raw = await self._jwks_cache.get(cid, uri)
            except StoreUnavailable:
                raw = None
            if raw is not None:
                now = self._clock()
                try:
                    cached = _set_decoder.decode(raw)
                    # Redis expires the entry too; this also covers replicas whose clocks differ.
                    if cached.fetched_at + self._policy.cache_ttl > now:
                        return with_keys(client, cached.keys, now, cached.fetched_at + self._policy.cache_ttl,
                                         cached.fetched_at)
                except Exception as exc:
                    self._log.error("jwks_uri.cache_unusable", client_id=cid, error=type(exc).__name__)
            if not fetch_on_miss:
                return client
        if not refetch:
            # A fetch failed (or a refetch ran) moments ago: do not let a cache flush turn every
            # request into another fetch.
            last = self._last_refetch.get(cid)
            if last is not None and self._clock() - last < self._policy.refetch_cooldown:
                return self._kept(client, self._clock(), last + self._policy.refetch_cooldown)
        # Single flight: concurrent misses for one client in this process share one fetch.
        pending = self._inflight.get(cid)
        if pending is None:
            pending = asyncio.ensure_future(self._fetch_and_store(client))
            self._inflight[cid] = pending
            pending.add_done_callback(lambda _f, cid=cid: self._inflight.pop(cid, None))
        return await asyncio.shield(pending)

    async def _fetch_and_store(self, client: Client) -> Client:
        cid = client.client_id
        record: ClientRecord = client.record
        uri = record.jwks_uri
        assert uri is not None
        now = self._clock()
        try:
            body = await self._fetch(uri)
            jwks = parse_fetched_jwks(body, default_alg=record.token_endpoint_auth_signing_alg)
            keys = await self._own_keys(record, jwks["keys"])
        except JwksFetchError as exc:
            self._log.warning("jwks_uri.fetch_failed", client_id=cid, reason=exc.reason)
            self._last_refetch[cid] = now
            if exc.reason == "no_signing_keys":  # a JWK Set that answers "no keys": withdrawn, not failed
                self._log.warning("jwks_uri.keys_withdrawn", client_id=cid, kids=sorted(client.keys))
                return Client(record, {}, client.scopes, now + self._policy.refetch_cooldown, now)
            # Keep the keys we had (if any, up to BROKER_JWKS_URI_MAX_STALE); try again after one
            # cooldown, not on every request.
            return self._kept(client, now, now + self._policy.refetch_cooldown)
        except Exception as exc:  # never let a fetch failure become a 500
            self._log.error("jwks_uri.fetch_failed", client_id=cid, reason="unexpected", error=type(exc).__name__)
            return self._kept(client, now, now + self._policy.refetch_cooldown)
        self._log.info("jwks_uri.fetched", client_id=cid, kids=[k["kid"] for k in keys])
        if self._jwks_cache is not None:
            try:
                await self._jwks_cache.put(cid, uri, msgspec.json.encode(_CachedSet(now, keys)), self._policy.cache_ttl)
            except StoreUnavailable:
                pass  # this replica still uses what it fetched
        try:
            return with_keys(client, keys, now, now + self._policy.cache_ttl, now)
        except Exception as exc:
            self._log.error("jwks_uri.keys_unusable", client_id=cid, error=type(exc).__name__)
            return Client(record, {}, client.scopes, now + self._policy.refetch_cooldown, now)

    def _kept(self, client: Client, now: float, refresh_at: float) -> Client:
        """``client`` with the keys it had, while fetches fail, until ``max_stale`` after they were
        fetched (``JwksUriPolicy.expired``): then none, its assertions refused until a fetch succeeds."""
        if client.keys and self._policy.expired(client.fetched_at, now):
            self._log.warning("jwks_uri.keys_expired", client_id=client.client_id, kids=sorted(client.keys),
                              fetched_at=int(client.fetched_at or 0))
            return Client(client.record, {}, client.scopes, refresh_at, client.fetched_at)
        return Client(client.record, client.keys, client.scopes, refresh_at, client.fetched_at)

    async def _own_keys(self, record: ClientRecord, keys: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """The fetched keys minus any registered for another client (one key, one client, unless
        both registrations set ``allow_shared_key``)."""
        client_id = record.client_id
        thumbprints = [key_thumbprint(k) for k in keys]
        try:
            holders = await self._registry.key_holders(thumbprints)
        except StoreUnavailable:  # cannot compare with the registered keys: a failed fetch (closed)
            raise JwksFetchError("key_index_unavailable") from None
        own = []
        for key, thumbprint in zip(keys, thumbprints):
            others = sorted(holder for holder, shares in holders.get(thumbprint, {}).items()
                            if holder != client_id and not (shares and record.allow_shared_key))
            if others:
                self._log.warning("jwks_uri.key_refused", client_id=client_id, kid=key["kid"], reason="jwk_shared",
                                  registered_for=others[0])
                continue
            own.append(key)
        return own

    async def _fetch(self, uri: str) -> bytes:
        return await fetch_jwks(uri, allow_http_loopback=self._policy.allow_http_loopback, timeout=self._policy.timeout)

    # -- migration aid and compat profiles -------------------------------------------------

    def legacy_aud_accepted(self, client_id: str, request_id: str) -> None:
        """Every acceptance of the legacy token-endpoint ``aud`` is logged and counted, so
        operators see who still has to migrate before the client's window closes."""
        self._log.warning("client_auth.legacy_aud_accepted", client_id=client_id, request_id=request_id)
        if self._metrics is not None:
            self._metrics.inc(LEGACY_AUD_METRIC, client_id=client_id)

    def compat_used(self, client_id: str, feature: str, request_id: str, **fields: Any) -> None:
        """An assertion accepted through a feature of the client's compat profile: logged and
        counted per client and feature, so the operator sees which clients still need which."""
        self._log.info("client_auth.compat_used", client_id=client_id, feature=feature, request_id=request_id, **fields)
        if self._metrics is not None:
            self._metrics.inc(CLIENT_COMPAT_USED, client_id=client_id, feature=feature)

    # -- invalidation ------------------------------------------------------------------------

    @property
    def generation(self) -> int:
        """Moves whenever the cached clients are dropped (the registry epoch moved, or Redis did not
        answer the poll): other per-process caches of registry data (trusted issuers) follow it."""
        return self._generation

    def invalidate(self) -> None:
        self._generation += 1
        self._cache.clear()
        self._unknown.clear()

    async def refresh(self) -> None:
        try:
            poll = await self._registry.poll()
        except StoreUnavailable:
            self._epoch = None  # cannot tell what changed meanwhile: start over when it returns
            self.invalidate()
            return
        if poll.epoch != self._epoch:
            self._epoch = poll.epoch
            self.invalidate()
        if self._watch is not None:
            await self._watch.observe(poll.marker)

    async def run(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._poll_interval)
