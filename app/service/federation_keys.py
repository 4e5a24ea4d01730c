"""The signing keys of trusted issuers (workload identity federation), fetched and cached the way a
``jwks_uri`` client's keys are (``app.service.directory``).

Where a record's keys come from (``app.oauth.trust``): its static ``jwks`` (parsed once per record);
its ``jwks_uri``; or OIDC discovery, ``<issuer>/.well-known/openid-configuration``, whose ``issuer``
must equal the record's and whose ``jwks_uri`` must pass the same check as a client's (a document
pointing at a private, loopback or link-local address is refused, with the reason logged). Every
request goes through the SSRF guard of ``app.service.jwks_fetch`` (resolved addresses checked,
connection pinned, no redirects, size and time limits; plain http to loopback only under
``BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK``).

A fetched set is validated key by key (``app.oauth.federation.issuer_keys``) and kept in the shared
``JwksUriCache`` for ``BROKER_JWKS_URI_CACHE_TTL`` seconds, under the issuer (no client_id contains
``/``, every issuer does, so the two never share an entry), and in process. A token naming a kid
the set lacks triggers one refetch, at most once per ``BROKER_JWKS_URI_REFETCH_COOLDOWN`` per issuer
across replicas (in-process marker, then the shared ``SET NX PX`` claim); concurrent misses of one
process share one fetch. So an issuer's key rotation is picked up without a restart. A failed fetch
keeps the keys held before (if any, for at most ``BROKER_JWKS_URI_MAX_STALE`` after they were
fetched: whoever can block the fetches must not keep a withdrawn key working), is logged
(``federation.keys_fetch_failed`` with its reason) and is not retried before one cooldown; a set
that answers with no usable key withdraws the keys at once. A token that finds no key is refused
(``federation_keys_unavailable``, 401 ``invalid_client``), as a ``jwks_uri`` client whose fetch
failed is refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec

from app.oauth.clients import InvalidClientMetadata, prepare_keys
from app.oauth.federation import issuer_keys
from app.oauth.jose import VerificationKey
from app.oauth.trust import TrustedIssuer
from app.service.directory import JwksUriPolicy
from app.service.jwks_fetch import JwksFetchError, check_jwks_uri, fetch_jwks
from app.store.base import JwksUriCache, StoreUnavailable

#: Issuers whose keys are kept per process (there are at most ``MAX_ISSUERS`` records).
MAX_ENTRIES = 1000


class _CachedSet(msgspec.Struct):
    fetched_at: float
    keys: list[dict[str, Any]]


_set_decoder = msgspec.json.Decoder(_CachedSet)


class _Entry(msgspec.Struct):
    record: TrustedIssuer
    keys: dict[str, VerificationKey]
    #: When to look again (the fetched set's TTL, a key's nbf/exp, or a failed fetch's cooldown).
    refresh_at: float
    #: Why the last fetch failed, while its cooldown runs (None after a success).
    failure: str | None = None
    #: When ``keys`` were fetched (None: a static ``jwks``, never stale).
    fetched_at: float | None = None


class IssuerKeys:
    def __init__(self, *, cache: JwksUriCache | None, policy: JwksUriPolicy, log: Any,
                 clock: Callable[[], float] = time.time,
                 fetch: Callable[..., Awaitable[bytes]] = fetch_jwks) -> None:
        self._cache = cache
        self._policy = policy
        self._log = log
        self._clock = clock
        self._fetch_url = fetch
        self._entries: dict[str, _Entry] = {}
        self._last_refetch: dict[str, float] = {}
        self._inflight: dict[str, asyncio.Future[_Entry]] = {}

    async def keys(self, record: TrustedIssuer, kid: str | None) -> tuple[dict[str, VerificationKey], str | None]:
        """The issuer's usable keys now, and why its last fetch failed (None when it did not)."""
        now = self._clock()
        entry = self._entries.get(record.issuer)
        if entry is not None and entry.record != record:
            entry = None  # the record changed (another key source, other algs)
        if entry is None and record.jwks is not None:
            entry = self._static(record, now)
        elif record.jwks is None:
            if entry is None or entry.refresh_at <= now:
                entry = await self._remote(record, refetch=False)
            elif kid is not None and kid not in entry.keys:
                entry = await self._maybe_refetch(record, entry)
        elif entry is not None and entry.refresh_at <= now:  # a static key's exp or nbf passed
            entry = self._static(record, now)
        assert entry is not None
        return entry.keys, entry.failure

    def _static(self, record: TrustedIssuer, now: float) -> _Entry:
        keys, refused = issuer_keys(record.jwks, record)
        if refused:
            self._log.warning("federation.keys_refused", issuer=record.issuer, reasons=refused[:10])
        try:
            prepared, refresh_at = prepare_keys(keys, now)
        except Exception as exc:  # a stored key that no longer parses: unusable, loudly, never a 500
            self._log.error("federation.keys_unusable", issuer=record.issuer, error=type(exc).__name__)
            prepared, refresh_at = {}, now + self._policy.refetch_cooldown
        return self._keep(_Entry(record, prepared, refresh_at))

    def _keep(self, entry: _Entry) -> _Entry:
        if len(self._entries) >= MAX_ENTRIES:
            self._entries.clear()
        self._entries[entry.record.issuer] = entry
        return entry

    def _source(self, record: TrustedIssuer) -> str:
        source = record.jwks_uri or record.discovery_url()
        assert source is not None  # validated: a SPIFFE trust domain has jwks or jwks_uri
        return source

    async def _maybe_refetch(self, record: TrustedIssuer, entry: _Entry) -> _Entry:
        """Unknown kid: one refetch per issuer per cooldown, shared by every replica."""
        now = self._clock()
        if now - self._last_refetch.get(record.issuer, -1e18) < self._policy.refetch_cooldown:
            return entry
        self._last_refetch[record.issuer] = now
        if self._cache is not None:
            try:
                claimed = await self._cache.claim_refetch(record.issuer, self._source(record),
                                                          int(self._policy.refetch_cooldown * 1000))
            except StoreUnavailable:
                return entry
            if not claimed:  # another replica refetched in this interval: take what it stored
                return await self._shared(record) or entry
        return await self._remote(record, refetch=True)

    async def _shared(self, record: TrustedIssuer) -> _Entry | None:
        if self._cache is None:
            return None
        try:
            raw = await self._cache.get(record.issuer, self._source(record))
            if raw is None:
                return None
            cached = _set_decoder.decode(raw)
            until = cached.fetched_at + self._policy.cache_ttl
            now = self._clock()
            if until <= now:
                return None
            keys, refresh_at = prepare_keys(cached.keys, now)
        except StoreUnavailable:
            return None
        except Exception as exc:  # written by something else: fetch instead
            self._log.error("federation.keys_cache_unusable", issuer=record.issuer, error=type(exc).__name__)
            return None
        return self._keep(_Entry(record, keys, min(refresh_at, until), fetched_at=cached.fetched_at))

    async def _remote(self, record: TrustedIssuer, *, refetch: bool) -> _Entry:
        if not refetch:
            shared = await self._shared(record)
            if shared is not None:
                return shared
        pending = self._inflight.get(record.issuer)
        if pending is None:  # single flight: concurrent misses of this process share one fetch
            pending = asyncio.ensure_future(self._fetch_and_store(record))
            self._inflight[record.issuer] = pending
            pending.add_done_callback(lambda _f, name=record.issuer: self._inflight.pop(name, None))
        return await asyncio.shield(pending)

    async def _fetch_and_store(self, record: TrustedIssuer) -> _Entry:
        now = self._clock()
        held = self._entries.get(record.issuer)
        held = held if held is not None and held.record == record else None
        try:
            keys = await self._fetch(record)
            prepared, refresh_at = prepare_keys(keys, now)
        except JwksFetchError as exc:
            if exc.reason != "no_usable_keys":
                return self._failed(record, held, exc, now)
            # The issuer answered with a set holding no key we can use: its keys are withdrawn (a
            # compromised key removed), not unreachable. Nothing is kept; looked at again soon.
            self._log.warning("federation.keys_fetch_failed", issuer=record.issuer, reason=exc.reason, kept=[],
                              withdrawn=sorted(held.keys) if held is not None else [])
            self._last_refetch[record.issuer] = now
            return self._keep(_Entry(record, {}, now + self._policy.refetch_cooldown, exc.reason, fetched_at=now))
        except Exception as exc:  # never let a fetch turn into a 500
            return self._failed(record, held, JwksFetchError("unexpected"), now, error=type(exc).__name__)
        self._log.info("federation.keys_fetched", issuer=record.issuer, kids=sorted(prepared))
        if self._cache is not None:
            try:
                await self._cache.put(record.issuer, self._source(record), msgspec.json.encode(_CachedSet(now, keys)),
                                      self._policy.cache_ttl)
            except StoreUnavailable:
                pass  # this replica still uses what it fetched
        return self._keep(_Entry(record, prepared, min(refresh_at, now + self._policy.cache_ttl), fetched_at=now))

    def _failed(self, record: TrustedIssuer, held: _Entry | None, exc: JwksFetchError, now: float,
                **error: str) -> _Entry:
        # Keep the keys held before, up to BROKER_JWKS_URI_MAX_STALE after they were fetched
        # (``JwksUriPolicy.expired``); try again after one cooldown, not on every request.
        old, fetched_at = ({}, None) if held is None else (held.keys, held.fetched_at)
        if old and self._policy.expired(fetched_at, now):
            self._log.warning("federation.keys_expired", issuer=record.issuer, kids=sorted(old), fetched_at=int(fetched_at or 0))
            old = {}
        self._log.warning("federation.keys_fetch_failed", issuer=record.issuer, reason=exc.reason, kept=sorted(old),
                          **error)
        self._last_refetch[record.issuer] = now
        return self._keep(_Entry(record, old, now + self._policy.refetch_cooldown, exc.reason, fetched_at=fetched_at))

    async def _fetch(self, record: TrustedIssuer) -> list[dict[str, Any]]:
        uri = record.jwks_uri
        if uri is None:
            uri = await self._discover(record)
        keys, refused = issuer_keys(_json(await self._get(uri)), record)
        if refused:
            self._log.warning("federation.keys_refused", issuer=record.issuer, reasons=refused[:10])
        if not keys:
            raise JwksFetchError("no_usable_keys")
        return keys

    async def _discover(self, record: TrustedIssuer) -> str:
        url = record.discovery_url()
        assert url is not None
        document = _json(await self._get(url))
        if not isinstance(document, dict) or document.get("issuer") != record.issuer:
            raise JwksFetchError("discovery_issuer_mismatch")
        try:
            return check_jwks_uri(document.get("jwks_uri"), allow_http_loopback=self._policy.allow_http_loopback)
        except InvalidClientMetadata as exc:  # e.g. jwks_uri_private: the document points inward
            raise JwksFetchError("discovery_" + exc.reason) from None

    async def _get(self, url: str) -> bytes:
        return await self._fetch_url(url, allow_http_loopback=self._policy.allow_http_loopback,
                                     timeout=self._policy.timeout)


def _json(body: bytes) -> Any:
    try:
        return msgspec.json.decode(body)
    except msgspec.DecodeError:
        raise JwksFetchError("not_json") from None
