"""Redis implementation of ``TokenStore``: issued-token cache, stampede lock, RFC 7009 revocations.

The token endpoint's hot path is one Redis call (``consume_and_lookup``), a Lua script that runs
atomically:

1. the replay record ``SET replay-key request-id NX PX ttl GET`` (the jti is consumed only after
   the assertion verified); a value that is not this request's id means replay, and the script
   stops there;
2. ``GET entry`` (read with ``pcall``: a broken cache key must not fail the request);
3. only when the entry is absent, the stampede lock ``SET lock request-id NX PX lock_ms``.

So a cache hit costs one round trip and a miss two (this call, then the write), and the read and
the lock are one atomic step (no request can read "absent", lose the race to another's write and
mint a second token). A miss with a token signed ahead (``NewEntry``: the caller signed it before
the call because it expected no entry) costs one: step 3 becomes "when the entry is absent and no
lock is held, store the new entry and its revocation pointer" (``_LOOKUP_OR_STORE``), still one
atomic step. The keys share the client's hash tag (one Redis Cluster slot). An error of
the call as a whole fails closed (``StoreUnavailable``); an error reading the entry alone comes
back in ``CacheLookup.cache_error`` and the caller mints (fails open).

With a request quota (``BROKER_CLIENT_QUOTA``) the same call first checks the client's counter for
the current window: over the quota it stops there (``QuotaExceeded``, no replay record written, so
a flooding client cannot grow the replay keyspace); otherwise a fresh replay record increments it.
That script is registered apart, so without a quota the call does exactly what is listed above. A
refused grant and the plain ``first_use`` of /revoke and /introspect (``consume_and_lookup`` with
no cache id) are counted by the same script, without the cache read.

A client whose compat profile allows assertion reuse (MSAL re-sends one cached assertion for
minutes) gets the same calls with a variant of step 1, a script registered apart (so other clients
run exactly the script above): the replay record holds the SHA-256 of the whole assertion before
the request id, and a record holding that same digest answers "reused" (accepted, counted by the
caller) instead of "replay". Another assertion with the same jti has another digest: a replay. A
reuse writes nothing (the record keeps the first use's expiry) and does not count toward the quota.

A token request with a DPoP proof (RFC 9449) gets the same calls with the proof's jti recorded in
them too (``keyspace.dpop_proof``: per proof key, kept for the proof's acceptance window), still
one round trip: the proof record is read before anything is written, so a replayed proof records
nothing and does not spend the assertion; it is written right after the assertion's record, so a
replayed assertion records no proof. Each combination of quota, reuse and proof is a script of its
own (``_script``), so a request without a proof runs exactly the scripts described above.

Entries, pointers and revocation markers all expire with the token they describe, so memory is
bounded by the tokens alive at once; a stampede lock lives ``LOCK_MS`` (2 s) at most.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import ResponseError

from app.oauth.access_token import FederatedIdentity
from app.store import keyspace
from app.store.base import LOCK_MS, CacheLookup, NewEntry, ProofRecord, QuotaExceeded, StoreUnavailable, reuse_verdict
from app.store.redis import RedisReplayGuard

# The token endpoint's script, in parts: with the request quota off it is _REPLAY + _LOOKUP, with
# it on _QUOTA_CHECK + _REPLAY + _QUOTA_COUNT + _LOOKUP (a second registered script, so the
# quota costs nothing when it is off).
# KEYS: replay record, cache entry, mint lock[, quota counter]. ARGV: request id, replay ttl (ms),
# lock ttl (ms)[, quota, quota window (ms)][, assertion digest: the reuse variant only, always last].
# With the quota on and no cache entry to read (a refused grant, /revoke, /introspect), KEYS are
# only the replay record and the quota counter.
# Returns {0} for a replay, {ok, entry|nil, locked} on first use (ok = 1) or an allowed reuse
# (ok = 4), {2, error, ok} when the entry read failed, {3, ms left in the window} over the quota.
# Only the replay SET and the quota commands may fail the call: cache errors are caught (pcall) so
# the cache fails open.
_REPLAY = """
local previous = redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2], 'GET')
if previous and previous ~= ARGV[1] then
  return {0}
end
local ok = 1
"""
# The record is '<digest> <request id>': our own retried call finds all of it (first use), a reuse
# finds the digest and another request's id, anything else is a replay.
_REPLAY_REUSE = """
local digest = ARGV[#ARGV] .. ' '
local mine = digest .. ARGV[1]
local previous = redis.call('SET', KEYS[1], mine, 'NX', 'PX', ARGV[2], 'GET')
local ok = 1
if previous and previous ~= mine then
  if string.sub(previous, 1, #digest) ~= digest then
    return {0}
  end
  ok = 4
end
"""
_READ = """
local entry = redis.pcall('GET', KEYS[2])
if type(entry) == 'table' and entry.err then
  return {2, entry.err, ok}
end
if entry then
  return {ok, entry, 0}
end
"""
_LOOKUP = _READ + """local locked = redis.pcall('SET', KEYS[3], ARGV[1], 'NX', 'PX', ARGV[3])
if type(locked) == 'table' and locked.err then
  return {ok, false, 0}
end
return {ok, false, locked and 1 or 0}
"""
# Checked before the replay SET: a request over the quota writes nothing. A counter left without
# an expiry (it cannot happen here, but an operator's PERSIST could) gets one instead of blocking
# the client for good.
_QUOTA_CHECK = """
local quota = KEYS[#KEYS]
if tonumber(redis.call('GET', quota) or 0) >= tonumber(ARGV[4]) then
  local left = redis.call('PTTL', quota)
  if left < 0 then
    redis.call('PEXPIRE', quota, ARGV[5])
    left = tonumber(ARGV[5])
  end
  return {3, left}
end
"""
# A fresh record counts, and so does an allowed reuse (ok = 4: each reuse is a request like any
# other, or one captured assertion would get round the quota for its whole lifetime); a replay was
# refused above, and redis-py's retry of this very call (reply lost after the write) finds its own
# request id and must not count twice. The window starts with its first request (fixed window).
_QUOTA_COUNT = """
if (not previous or ok == 4) and redis.call('INCR', quota) == 1 then
  redis.call('PEXPIRE', quota, ARGV[5])
end
if #KEYS == 2 then
  return {ok, false, 0}
end
"""
_CONSUME_AND_LOOKUP = _REPLAY + _LOOKUP
_QUOTA_CONSUME_AND_LOOKUP = _QUOTA_CHECK + _REPLAY + _QUOTA_COUNT + _LOOKUP
_REUSE_CONSUME_AND_LOOKUP = _REPLAY_REUSE + _LOOKUP
_REUSE_QUOTA_CONSUME_AND_LOOKUP = _QUOTA_CHECK + _REPLAY_REUSE + _QUOTA_COUNT + _LOOKUP
# The reuse variant of the plain replay record (no quota, no cache read): /revoke, /introspect and
# a refused grant of such a client.
_RECORD_ONLY = """
return {ok, false, 0}
"""
_REUSE_ONLY = _REPLAY_REUSE + _RECORD_ONLY
# DPoP (RFC 9449 §11.1): the proof's jti record is the last KEYS entry and its ttl the last ARGV
# entry; _PROOF_CHECK takes both off first, so the rest of the script sees the KEYS and ARGV it
# always did. A proof recorded by another request stops the call before anything is written, so
# the assertion is not spent ({5}); an assertion replay stops it before the proof is recorded
# ({0}); only then is the proof recorded. (Redis runs the script atomically: the GET and the
# later SET cannot be split by another request.) Our own retried call finds its own request id.
_PROOF_CHECK = """
local proof_ttl = table.remove(ARGV)
local proof = table.remove(KEYS)
local seen = redis.call('GET', proof)
if seen and seen ~= ARGV[1] then
  return {5}
end
"""
_PROOF_RECORD = """
redis.call('SET', proof, ARGV[1], 'PX', proof_ttl)
"""
# A token signed ahead (``NewEntry``): the entry and its ttl are the last ARGV entries and the
# revocation pointer the last KEYS entry (before a DPoP proof's, which _PROOF_CHECK takes off
# first); _NEW_TAKE takes them off, so the rest sees the KEYS and ARGV it always did. _LOOKUP_OR_STORE
# replaces _LOOKUP: an absent entry with no mint lock held is written with its pointer in the same
# atomic step as the read ({ok, false, 2}: stored), so no lock is needed and no other request can
# write in between; a lock held by another request means that one is minting ({ok, false, 0}: the
# caller waits for its entry, as without a token signed ahead).
_NEW_TAKE = """
local new_ttl = table.remove(ARGV)
local new_entry = table.remove(ARGV)
local new_pointer = table.remove(KEYS)
"""
_LOOKUP_OR_STORE = _READ + """local held = redis.pcall('EXISTS', KEYS[3])
if type(held) == 'table' and held.err then
  return {ok, false, 0}
end
if held == 1 then
  return {ok, false, 0}
end
local stored = redis.pcall('SET', KEYS[2], new_entry, 'PX', new_ttl)
if type(stored) == 'table' and stored.err then
  return {ok, false, 0}
end
redis.pcall('SET', new_pointer, KEYS[2], 'PX', new_ttl)
return {ok, false, 2}
"""
#: The script's code for an allowed reuse of the same assertion (a fresh record is 1), and for a
#: replayed DPoP proof; the lookup's third value when the token signed ahead was stored.
_REUSED = 4
_PROOF_REPLAYED = 5
_STORED = 2


def _script(*, quota: bool, reuse: bool, proof: bool, lookup: bool, new: bool = False) -> str:
    """The token endpoint's script for one combination of options, from the parts above. Without a
    proof or a token signed ahead it is exactly one of the scripts above (the quota ones read the
    cache only when given its keys). With a proof: the check first, the record right after the
    replay record. With a token signed ahead (``new``, only with a lookup): its arguments taken
    off next, and the lookup stores it when the entry is absent and no lock is held."""
    replay = _REPLAY_REUSE if reuse else _REPLAY
    parts = [_PROOF_CHECK if proof else "", _NEW_TAKE if new else "", _QUOTA_CHECK if quota else "", replay,
             _PROOF_RECORD if proof else ""]
    found = _LOOKUP_OR_STORE if new else _LOOKUP
    if quota:
        parts += [_QUOTA_COUNT, found]
    else:
        parts.append(found if lookup else _RECORD_ONLY)
    return "".join(parts)

# KEYS: cache entry, revocation pointer, mint lock. ARGV: entry, ttl (ms).
_WRITE = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SET', KEYS[2], KEYS[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[3])
return 1
"""


class RedisTokenStore(RedisReplayGuard):
    """Also a ``ReplayGuard``: the plain replay record (``first_use``) is the fallback below."""

    metric_op = "token_cache"

    def __init__(self, redis: Any, *, quota: int = 0, quota_window: int = 60, **options: Any) -> None:
        """``quota``: first uses per client per ``quota_window`` seconds; 0 = no quota."""
        super().__init__(redis, **options)
        self._write = redis.register_script(_WRITE)
        self._quota = quota
        # Every variant this store can run, by (reuse, proof, lookup); the quota decides for all.
        # Registering costs no round trip (redis-py sends EVALSHA, and the script once if Redis
        # lacks it). Without a quota, a plain refused grant needs no script (``first_use``).
        self._scripts = {
            (reuse, proof, lookup, new): redis.register_script(_script(quota=bool(quota), reuse=reuse, proof=proof,
                                                                       lookup=lookup, new=new))
            for reuse in (False, True) for proof in (False, True) for lookup in ((True,) if quota else (False, True))
            for new in ((False, True) if lookup else (False,))
            if quota or lookup or reuse or proof
        }
        if quota:
            self._quota_args = [str(quota).encode(), str(quota_window * 1000).encode()]  # encoded once, not per call

    def cache_id(self, client_id: str, scopes: tuple[str, ...], audience: str, registration_id: str, version: int,
                 kid: str, federation: FederatedIdentity | None = None, jkt: str | None = None) -> str:
        return keyspace.token_cache_id(client_id, scopes, audience, registration_id, version, kid,
                                       None if federation is None else (federation.iss, federation.sub), jkt)

    async def consume_and_lookup(
        self, client_id: str, jti: str, request_id: str, ttl_ms: int, cache_id: str | None, lock_ms: int = LOCK_MS,
        reuse: str | None = None, proof: ProofRecord | None = None, new: NewEntry | None = None,
    ) -> CacheLookup:
        replay = keyspace.replay(client_id, jti)
        if cache_id is None:
            new = None  # nothing to store it under
        if cache_id is None and not self._quota and reuse is None and proof is None:
            # The grant was refused: only the replay record matters.
            return CacheLookup(await self.first_use(client_id, jti, request_id, ttl_ms), None)
        # The refused-grant path of the quota script is counted too: only the entry read is left out.
        names = [replay] if cache_id is None else [
            replay, keyspace.token_entry(client_id, cache_id), keyspace.token_lock(client_id, cache_id)]
        args: list[Any] = [request_id, ttl_ms, lock_ms]
        if self._quota:
            names.append(keyspace.token_quota(client_id))
            args += self._quota_args
        if reuse is not None:
            args.append(reuse)  # always the last but the new entry's and the proof's
        if new is not None:  # last but the proof's: _NEW_TAKE takes them off right after _PROOF_CHECK
            names.append(keyspace.token_pointer(client_id, new.token_jti))
            args += [new.entry, new.ttl_ms]
        if proof is not None:  # always last: _PROOF_CHECK takes them off first
            names.append(keyspace.dpop_proof(client_id, proof.jkt, proof.jti))
            args.append(proof.ttl_ms)
        call = self._scripts[reuse is not None, proof is not None, cache_id is not None or bool(self._quota),
                             new is not None](keys=names, args=args)
        try:
            # Labelled "replay": this is the token endpoint's replay round trip (the cache rides along).
            reply = await self._run(call, op="replay")
        except StoreUnavailable as exc:
            if not isinstance(exc.__cause__, ResponseError):
                raise  # no answer at all: the replay is unconfirmed (fail closed)
            # Redis refused the script as a whole, or a command of it failed (an ACL that denies the
            # cache or quota keys, a key of the wrong type, OOM, READONLY...): the plain replay
            # records alone decide; the cache and the quota fail open, and an allowed reuse is
            # refused as a replay (fails closed).
            return await self._fallback(client_id, jti, request_id, ttl_ms, proof, type(exc.__cause__).__name__)
        return self._lookup(reply)

    async def _fallback(self, client_id: str, jti: str, request_id: str, ttl_ms: int, proof: ProofRecord | None,
                        error: str) -> CacheLookup:
        if proof is not None:  # the proof first: a replayed one must not spend the assertion
            previous = await self._run(self.redis.set(keyspace.dpop_proof(client_id, proof.jkt, proof.jti), request_id,
                                                      nx=True, px=proof.ttl_ms, get=True), op="replay")
            if previous is not None and previous != request_id.encode():
                return CacheLookup(False, None, error, proof_replayed=True)
        return CacheLookup(await self.first_use(client_id, jti, request_id, ttl_ms), None, error)

    async def record_reusable(self, client_id: str, jti: str, request_id: str, ttl_ms: int, digest: str) -> str:
        lookup = await self.consume_and_lookup(client_id, jti, request_id, ttl_ms, None, reuse=digest)
        return reuse_verdict(lookup)

    def _lookup(self, reply: list[Any]) -> CacheLookup:
        code = reply[0]
        if code == 0:
            return CacheLookup(False, None)
        if code == _PROOF_REPLAYED:
            return CacheLookup(False, None, proof_replayed=True)
        if code == 2:  # the entry read failed (an error reply: WRONGTYPE...): mint instead
            self._count_error(self.metric_op, "ResponseError")
            return CacheLookup(True, None, "cache_read_error", reused=reply[2] == _REUSED)
        if code == 3:
            raise QuotaExceeded(int(reply[1]))
        entry, third = reply[1], reply[2]
        return CacheLookup(True, None if entry is None else bytes(entry), None, third == 1, code == _REUSED,
                           stored=third == _STORED)

    async def read(self, client_id: str, cache_id: str) -> bytes | None:
        value = await self._run(self.redis.get(keyspace.token_entry(client_id, cache_id)))
        return None if value is None else bytes(value)

    async def lock_and_read(self, client_id: str, cache_id: str, owner: str, ttl_ms: int) -> tuple[bool, bytes | None]:
        # One MULTI (same hash tag): the entry as it is when the lock is decided. A miss read before
        # another request's write may reach the lock after that write released it; it then sees
        # the entry here instead of minting a second token.
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keyspace.token_lock(client_id, cache_id), owner, nx=True, px=ttl_ms)
            pipe.get(keyspace.token_entry(client_id, cache_id))
            locked, entry = await self._run(pipe.execute())
        return bool(locked), None if entry is None else bytes(entry)

    async def unlock(self, client_id: str, cache_id: str) -> None:
        await self._run(self.redis.delete(keyspace.token_lock(client_id, cache_id)))

    async def write(self, client_id: str, cache_id: str, token_jti: str, entry: bytes, ttl_ms: int) -> None:
        # One script call (one reply to parse, not a five-reply MULTI): the entry, the pointer that
        # lets revocation find it, and the lock released (losers poll the entry; releasing early
        # only lets a later miss mint sooner).
        names = [keyspace.token_entry(client_id, cache_id), keyspace.token_pointer(client_id, token_jti),
                 keyspace.token_lock(client_id, cache_id)]
        await self._run(self._write(keys=names, args=[entry, ttl_ms]))

    async def revoke(self, client_id: str, token_jti: str, ttl_ms: int) -> None:
        pointer = keyspace.token_pointer(client_id, token_jti)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(keyspace.token_revoked(client_id, token_jti), b"1", px=ttl_ms)
            pipe.get(pointer)
            _, entry_key = await self._run(pipe.execute())
        if entry_key is not None:
            # The entry may meanwhile hold a newer token for the same key: deleting it costs one mint.
            await self._run(self.redis.delete(bytes(entry_key).decode("ascii"), pointer))

    async def is_revoked(self, client_id: str, token_jti: str) -> bool:
        return bool(await self._run(self.redis.exists(keyspace.token_revoked(client_id, token_jti))))

