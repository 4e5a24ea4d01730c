"""The issued-token cache: reuse one still-fresh access token across a client's requests and replicas.

RFC 6749 §5.1 lets the server answer a request with any token that fits it; RFC 9068 tokens carry
no per-request data, so two requests that agree on (client_id, sorted unique scopes, audience,
client registration id and version, signing kid, the federated workload of a client
authenticated by a workload token, and for a DPoP-bound token the proof key's thumbprint ``jkt``)
can share one token: one cache entry, named by ``TokenStore.cache_id``. A token bound to one key is
never served to another key, nor to a bearer request, nor a bearer token to a DPoP request. The cache:

- never runs before the client is fully authenticated and its jti consumed: the token service
  hands in the entry read by the same atomic store call that recorded the jti
  (``TokenStore.consume_and_lookup``, one Lua script);
- serves an entry only when it decodes strictly, is not expired, still has at least
  ``cache_min_remaining_share`` of its lifetime left, and its token is byte for byte the one this
  broker would have signed for this request: header (alg, current kid) and payload (iss, sub,
  client_id, aud, scope, jti, iat, exp, federation, and ``cnf`` with the request's ``jkt``) are rebuilt and compared, and the jti must name the
  client's current registration, so an entry planted under another grant's id (another client,
  scope set, audience or registration) is a miss. The signature is not re-verified: writing to
  Redis lets one break the cache, not forge a signature. Bytes that passed under an id are
  remembered with it (up to 4,096 pairs per process): read again under the same id, only their
  times are checked;
- signs a token ahead of the lookup when this process served no still-fresh token for the entry
  (``sign_ahead``): the lookup stores it if the entry is absent and no lock is held, in the same
  atomic step (a cold miss in one store call); otherwise it is thrown away, or minted with when
  this request mints after all (a stale entry);
- on a miss, mints once per entry across every replica: an in-process single flight (one task per
  entry; other requests in the process await it) in front of a short Redis lock (``SET NX PX``);
  a replica that loses the lock polls the entry for up to ``cache_stampede_wait`` seconds, then
  mints itself;
- fails open: any cache read, lock or write error, or a corrupt entry, means "mint and answer".

Invalidation needs no purge: the registration id (new when a deleted client_id is registered
again), its version (bumped by every admin change) and the signing kid are part of the entry's
id, so an entry made before a client is disabled, loses scopes or keys, is deleted and registered
again, or before the signing key changes is never found again and expires with its token.
Revocation (RFC 7009) deletes the entry that holds the revoked token.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

import msgspec

from app.aio import running_loop
from app.config import Settings
from app.metrics import CACHE_HITS as HITS
from app.metrics import CACHE_MISSES as MISSES
from app.metrics import CACHE_STAMPEDE_WAITS as STAMPEDE_WAITS
from app.metrics import TOKENS_MINTED as MINTED
from app.metrics import TOKENS_REVOKED as REVOKED
from app.oauth.access_token import AccessTokenClaims, Confirmation, TokenSigner
from app.oauth.clients import jti_registration, registration_jti
from app.oauth.grant import Grant
from app.store.base import LOCK_MS, CacheLookup, NewEntry, StoreUnavailable, TokenStore

_POLL_INTERVAL = 0.02
#: Keys of each per-process memo (``TokenCache._checked``, ``_served``); all forgotten at once past it.
_CHECKED_MAX = 4096
_SIGNATURE = re.compile(r"[A-Za-z0-9_-]+")
#: The miss reason of an entry that was not there (``check``'s, and the metric's label).
_ABSENT = "absent"


class CacheEntry(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """The stored entry (JSON). Everything else about the token is rebuilt from the request."""

    access_token: str
    jti: str
    iat: int
    exp: int


def _put(table: dict[Any, CacheEntry], key: Any, entry: CacheEntry) -> None:
    """One of the per-process memos: at most ``_CHECKED_MAX`` keys, all forgotten at once past it."""
    if len(table) >= _CHECKED_MAX and key not in table:
        table.clear()
    table[key] = entry


class SignedAhead(msgspec.Struct, frozen=True):
    """A token signed before the lookup (``TokenCache.sign_ahead``) and what the lookup stores of it."""

    token: CacheEntry
    new: NewEntry


_decode = msgspec.json.Decoder(CacheEntry).decode
_encode = msgspec.json.Encoder().encode


class TokenCache:
    def __init__(self, settings: Settings, *, store: TokenStore, metrics: Any, log: Any) -> None:
        self._issuer = settings.issuer
        self._share = settings.cache_min_remaining_share
        self._wait = settings.cache_stampede_wait
        # An entry minted by a replica whose clock runs ahead (within leeway + skew) is still ours.
        self._future_tolerance = settings.leeway + settings.clock_skew
        self.store = store
        self._metrics = metrics
        self._log = log
        self._inflight: dict[str, asyncio.Task[tuple[CacheEntry, str]]] = {}
        # (cache id, entry bytes) -> the entry those bytes decoded to when they passed ``check``
        # for that id: the id names everything the check compares (client, scopes, audience,
        # registration and version, kid, federation, jkt; the issuer is the process's), so the
        # same bytes under the same id pass again and only their times are checked anew.
        self._checked: dict[tuple[str, bytes], CacheEntry] = {}
        # cache id -> the last entry this process served or signed ahead under it: while that one
        # is fresh a hit is likely, and no token is signed ahead of the lookup (``sign_ahead``).
        # A token signed ahead counts at once, so a burst of cold requests in one process signs
        # one: the others' lookups run after its store and find it.
        self._served: dict[str, CacheEntry] = {}

    def cache_id(self, grant: Grant, version: int, signer: TokenSigner, jkt: str | None = None) -> str:
        """The id of the entry for this grant (its registration), registration ``version``, signing
        key and DPoP proof key (``jkt``, None for a bearer token)."""
        return self.store.cache_id(grant.client_id, grant.scopes, grant.audience, grant.registration_id, version,
                                   signer.kid, grant.federation, jkt)

    def sign_ahead(self, grant: Grant, signer: TokenSigner, cache_id: str, now: float,
                   jkt: str | None = None) -> SignedAhead | None:
        """A token for this grant signed before the lookup, for the lookup to store when the entry
        is absent (a miss then costs one store call, not two); None while the last token this
        process served or signed ahead under ``cache_id`` is still fresh (a hit is likely: no
        signature spent)."""
        last = self._served.get(cache_id)
        if last is not None and self._fresh(last, now) is None:
            return None
        entry = self._sign(grant, signer, int(now), jkt)
        self._remember(cache_id, entry)
        return SignedAhead(entry, NewEntry(_encode(entry), entry.jti, max(1, int((entry.exp - now) * 1000))))

    async def issue(self, grant: Grant, signer: TokenSigner, cache_id: str, lookup: CacheLookup, now: float,
                    request_id: str, jkt: str | None = None, ahead: SignedAhead | None = None) -> tuple[CacheEntry, str]:
        """The token to answer with and how it was found: ``hit``, ``wait`` or ``mint``. ``ahead``:
        the token signed before the lookup (``sign_ahead``), served when the lookup stored it and
        used instead of a new signature when this request mints."""
        raw = lookup.entry
        if lookup.stored and ahead is not None:  # the lookup found no entry and stored this one
            self._metrics.inc(MISSES, reason=_ABSENT)  # a metric label, not a refusal reason
            entry = self._mint(grant, signer, int(now), jkt, ahead)
            self._remember(cache_id, entry)
            return entry, "mint"
        known = None if raw is None else self._checked.get((cache_id, raw))
        if known is not None and self._fresh(known, now) is None:  # these bytes passed check() for this id
            self._metrics.inc(HITS)
            self._remember(cache_id, known)
            return known, "hit"
        entry, reason = self.check(raw, grant, signer, now, jkt)
        if entry is not None:
            assert raw is not None
            _put(self._checked, (cache_id, raw), entry)
            self._metrics.inc(HITS)
            self._remember(cache_id, entry)
            return entry, "hit"
        if lookup.cache_error is not None:
            reason = "error"
            self._log.warning("token_cache.read_failed", request_id=request_id, client_id=grant.client_id,
                              error=lookup.cache_error)
        elif reason in ("corrupt", "mismatch"):
            self._log.warning("token_cache.entry_rejected", request_id=request_id, client_id=grant.client_id,
                              reason=reason)
        self._metrics.inc(MISSES, reason=reason)

        task = self._inflight.get(cache_id)
        # A request whose lookup took the Redis lock is the one every replica waits for: it mints
        # itself and never queues behind a request of this process that lost the lock to it (that
        # one is polling Redis for the very entry this one is about to write).
        if task is not None and not lookup.locked:  # this process already has a fill for this entry
            self._metrics.inc(STAMPEDE_WAITS, via="process")
            try:
                entry, _ = await asyncio.wait_for(asyncio.shield(task), self._wait + LOCK_MS / 1000)
            except Exception:  # the leader failed or is stuck: do not make this request fail too
                return self._mint(grant, signer, int(now), jkt, ahead), "mint"
            return entry, "wait"
        # The fill runs as its own task so a leader whose client goes away cannot strand the others.
        task = running_loop().create_task(self._fill(grant, signer, cache_id, now, request_id, lookup.locked, jkt,
                                                     ahead))
        self._inflight[cache_id] = task  # the lock holder's fill replaces a polling one: later misses join it
        task.add_done_callback(lambda t: self._inflight.pop(cache_id) if self._inflight.get(cache_id) is t else None)
        return await asyncio.shield(task)

    def check(self, raw: bytes | None, grant: Grant, signer: TokenSigner, now: float,
              jkt: str | None = None) -> tuple[CacheEntry | None, str]:
        """A servable entry, or None and the miss reason (``jkt``: the proof key of a DPoP request)."""
        if raw is None:
            return None, _ABSENT
        try:
            entry = _decode(raw)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None, "corrupt"
        if (late := self._fresh(entry, now)) is not None:
            return None, late
        if jti_registration(entry.jti) != grant.registration_id:  # another registration's token
            return None, "mismatch"
        claims = AccessTokenClaims(
            iss=self._issuer, sub=grant.client_id, client_id=grant.client_id, aud=grant.audience,
            scope=grant.scope, jti=entry.jti, iat=entry.iat, exp=entry.exp, federation=grant.federation,
            cnf=None if jkt is None else Confirmation(jkt),
        )
        token = entry.access_token
        try:
            prefix = signer.signing_input(claims) + b"."
        except Exception:  # a jti msgspec cannot encode (lone surrogate...): planted, not ours
            return None, "corrupt"
        if not token.isascii() or not token.startswith(prefix.decode("ascii")) or not _SIGNATURE.fullmatch(token, len(prefix)):
            return None, "mismatch"
        return entry, "hit"

    def _fresh(self, entry: CacheEntry, now: float) -> str | None:
        """None if the entry's times allow serving it ``now``, else the miss reason."""
        lifetime = entry.exp - entry.iat
        if lifetime <= 0 or entry.iat > now + self._future_tolerance:
            return "corrupt"
        remaining = entry.exp - now
        if remaining <= 0 or remaining < self._share * lifetime:
            return "stale"
        return None

    async def _fill(self, grant: Grant, signer: TokenSigner, cache_id: str, now: float,
                    request_id: str, prelocked: bool, jkt: str | None,
                    ahead: SignedAhead | None = None) -> tuple[CacheEntry, str]:
        client_id = grant.client_id
        if prelocked:  # the lookup found no entry and took the lock in the same atomic step
            locked, raw = True, None
        else:  # a stale or rejected entry: take the lock now, re-reading the entry atomically
            try:
                locked, raw = await self.store.lock_and_read(client_id, cache_id, request_id, LOCK_MS)
            except StoreUnavailable as exc:
                self._log.warning("token_cache.lock_failed", request_id=request_id, client_id=client_id, error=str(exc))
                locked, raw = True, None  # fail open: mint
        entry, _ = self.check(raw, grant, signer, now, jkt)
        if entry is not None:  # written by another request since this one's first read
            self._metrics.inc(STAMPEDE_WAITS, via="replica")
            if locked:
                try:
                    await self.store.unlock(client_id, cache_id)
                except StoreUnavailable:
                    pass  # it expires in LOCK_MS anyway
            return entry, "wait"
        if not locked:
            self._metrics.inc(STAMPEDE_WAITS, via="replica")
            deadline = time.monotonic() + self._wait
            while time.monotonic() < deadline:
                await asyncio.sleep(_POLL_INTERVAL)
                try:
                    raw = await self.store.read(client_id, cache_id)
                except StoreUnavailable:
                    break
                entry, _ = self.check(raw, grant, signer, now, jkt)
                if entry is not None:
                    return entry, "wait"
            self._log.info("token_cache.stampede_timeout", request_id=request_id, client_id=client_id)
        entry = self._mint(grant, signer, int(now), jkt, ahead)
        try:
            await self.store.write(client_id, cache_id, entry.jti, _encode(entry), max(1, int((entry.exp - now) * 1000)))
        except StoreUnavailable as exc:
            self._log.warning("token_cache.write_failed", request_id=request_id, client_id=client_id, error=str(exc))
        self._remember(cache_id, entry)
        return entry, "mint"

    def _remember(self, cache_id: str, entry: CacheEntry) -> None:
        _put(self._served, cache_id, entry)

    def _mint(self, grant: Grant, signer: TokenSigner, now: int, jkt: str | None,
              ahead: SignedAhead | None = None) -> CacheEntry:
        """The token signed ahead for this request if there is one, else a new one; counted as minted."""
        entry = ahead.token if ahead is not None else self._sign(grant, signer, now, jkt)
        self._metrics.inc(MINTED)  # logged as the request's token.issued line (cache: mint)
        return entry

    def _sign(self, grant: Grant, signer: TokenSigner, now: int, jkt: str | None) -> CacheEntry:
        claims = AccessTokenClaims(
            iss=self._issuer,
            sub=grant.client_id,
            client_id=grant.client_id,
            aud=grant.audience,
            scope=grant.scope,
            jti=registration_jti(grant.registration_id),
            iat=now,
            exp=now + grant.lifetime,
            federation=grant.federation,
            cnf=None if jkt is None else Confirmation(jkt),  # RFC 9449 §6.1
        )
        return CacheEntry(signer.sign(claims), claims.jti, claims.iat, claims.exp)

    async def revoked(self, client_id: str, token_jti: str, ttl_ms: int) -> None:
        await self.store.revoke(client_id, token_jti, ttl_ms)
        self._metrics.inc(REVOKED)
