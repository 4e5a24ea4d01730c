"""Store interfaces. The service layer depends on these, never on redis-py directly.

Services name what they store by its subject (a client_id, a jti, a source address, a grant's
fields); the implementations build the Redis key names from those (``app.store.keyspace``), so no
key name ever leaves ``app/store``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import msgspec

from app.oauth.access_token import FederatedIdentity
from app.oauth.clients import ClientRecord
from app.oauth.trust import TrustedIssuer

#: How long a request may hold the right to mint one cache entry (a mint normally takes a few ms).
LOCK_MS = 2000


class StoreUnavailable(Exception):
    """The store could not answer (down, slow, refusing, out of memory...). Fail closed."""


class QuotaExceeded(Exception):
    """The client has used up its request quota for the current window; nothing was recorded."""

    def __init__(self, retry_after_ms: int) -> None:
        super().__init__(retry_after_ms)
        #: Time until the window ends.
        self.retry_after_ms = retry_after_ms


class ReplayGuard(Protocol):
    async def first_use(self, client_id: str, jti: str, request_id: str, ttl_ms: int) -> bool:
        """Record an assertion's jti atomically.

        Args:
            client_id: The client the assertion authenticated (jti values are per client).
            jti: The assertion's ``jti``.
            request_id: This request; a client-library retry of the very same command (reply lost
                after the write) is recognised as first use rather than a replay.
            ttl_ms: How long the record must outlive the assertion.

        Returns:
            True only for the first use of (client_id, jti).
        """
        ...

    async def record_reusable(self, client_id: str, jti: str, request_id: str, ttl_ms: int, digest: str) -> str:
        """``first_use`` for a client whose compat profile allows assertion reuse: the record holds
        ``digest`` (of the whole assertion), and the same digest again is a reuse, not a replay.

        Returns:
            ``FIRST_USE``, ``REUSED`` (this jti was recorded with this very digest) or ``REPLAYED``
            (recorded without it: another assertion with the same jti, or before reuse was allowed).
        """
        ...




class RegistryLost(StoreUnavailable):
    """The registry's marker is missing or names another registry: a write is refused (so nothing
    is written into an emptied Redis), and the broker answers 503 until the registry is restored."""


class RecordUnreadable(Exception):
    """A stored client record does not decode as a ``ClientRecord`` (written by something else)."""


class RegistryConflict(Exception):
    """A conditional registry write found another state: ``reason`` is ``exists`` (create of a
    registered client_id) or ``changed`` (the record was changed, or deleted and registered again,
    since it was read)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class KeyShared(Exception):
    """A public key of the record is registered for another client (RFC 7638 thumbprint), and the
    two registrations have not both set ``allow_shared_key``."""

    def __init__(self, thumbprint: str, holder: str) -> None:
        super().__init__(thumbprint)
        self.thumbprint = thumbprint
        self.holder = holder


class RegistryPoll(msgspec.Struct, frozen=True):
    """What a replica's registry poll reads in one call."""

    epoch: int
    #: The registry's id, or None when its marker is missing.
    marker: str | None


#: ``put`` expectations. ``CREATE``: the client_id must not be registered. ``ANY``: no check
#: (start-up tasks, tests). Otherwise pass the record read before: the write happens only if the
#: stored record is still that registration at that version.
CREATE = "create"
ANY = "any"


class ClientRegistry(Protocol):
    """The client registry (records, the key index, the epoch and the marker) under one hash tag.

    Every write is one atomic script that first checks the marker against ``registry_id`` (the
    registry this broker serves, learnt at start: ``app.service.registry_state``), so no write
    ever lands in a registry that was lost meanwhile.
    """

    #: The id of the registry this store writes to; None refuses every write (``RegistryLost``).
    registry_id: str | None

    async def get(self, client_id: str) -> ClientRecord | None:
        """Returns: the registered client, or None. Raises: ``RecordUnreadable``."""
        ...

    async def put(self, record: ClientRecord, expect: ClientRecord | str = ANY, *, index_only_new: bool = False) -> None:
        """Create or replace a client, keep the key index in step and bump the epoch, atomically.

        Args:
            record: The complete record to store.
            expect: ``CREATE``, ``ANY`` or the record this write replaces (see above).
            index_only_new: Index the record's keys without refusing shared ones (bringing records
                stored before the index existed into it).

        Raises:
            RegistryLost, RegistryConflict, KeyShared (nothing is written then).
        """
        ...

    async def delete(self, client_id: str) -> bool:
        """Remove a client and its key index entries, bump the epoch. Returns: whether it existed.
        Raises: ``RegistryLost``."""
        ...

    async def list_ids(self) -> list[str]:
        """Returns: every registered client_id, sorted."""
        ...

    async def indexed_ids(self) -> set[str]:
        """Returns: the client_ids whose keys are in the key index."""
        ...

    async def key_holders(self, thumbprints: Sequence[str]) -> dict[str, dict[str, bool]]:
        """Returns: for each thumbprint that is registered, {client_id: allows sharing}."""
        ...

    async def epoch(self) -> int:
        """Returns: a counter bumped by every change; replicas poll it to drop cached clients."""
        ...

    async def poll(self) -> RegistryPoll:
        """The epoch and the marker, in one command (the replicas' 0.25 s poll)."""
        ...

    async def create(self, registry_id: str) -> str:
        """Set the marker to ``registry_id`` unless one exists (``SET NX``).
        Returns: the marker in effect (ours, or the one another broker set first)."""
        ...


class TrustStore(Protocol):
    """Trusted issuers of workload identity federation (``app.oauth.trust``), stored with the
    client registry: each write is one atomic script that checks the registry's marker (refused
    with ``RegistryLost`` like a client write) and bumps the registry epoch, so every replica
    drops what it cached of the issuers on its next poll, as it does for clients."""

    async def get_issuer(self, issuer: str) -> TrustedIssuer | None:
        """Returns: the record of this ``issuer`` (a token's ``iss``, or a SPIFFE trust domain
        ``spiffe://<domain>``), or None. Raises: ``RecordUnreadable``."""
        ...

    async def put_issuer(self, record: TrustedIssuer) -> None:
        """Create or replace the record of ``record.issuer`` and bump the epoch, atomically.

        Raises:
            RegistryLost; RegistryConflict (``full``): ``MAX_ISSUERS`` records are stored and this
            is not one of them (nothing is written then).
        """
        ...

    async def delete_issuer(self, issuer: str) -> bool:
        """Remove the record, bump the epoch. Returns: whether it existed. Raises: ``RegistryLost``."""
        ...

    async def list_issuers(self) -> list[TrustedIssuer]:
        """Returns: every stored record that decodes, sorted by issuer."""
        ...


class JwksUriCache(Protocol):
    """Key sets fetched from clients' ``jwks_uri``, shared by replicas (RFC 7591 §2)."""

    async def get(self, client_id: str, jwks_uri: str) -> bytes | None:
        """Returns: the stored set for this client and URI, or None when absent or expired."""
        ...

    async def put(self, client_id: str, jwks_uri: str, value: bytes, ttl_s: int) -> None:
        """Store the validated set for ``ttl_s`` seconds (at least 1)."""
        ...

    async def claim_refetch(self, client_id: str, jwks_uri: str, cooldown_ms: int) -> bool:
        """Returns: True for the one caller (on any replica) allowed to refetch in this interval."""
        ...


class ProofRecord(msgspec.Struct, frozen=True):
    """A DPoP proof's jti to record with the assertion's (RFC 9449 §11.1): unique per proof key."""

    jkt: str
    jti: str
    ttl_ms: int


class CacheLookup(msgspec.Struct, frozen=True):
    """What the token endpoint's one store call returns: the replay verdict and the cache entry.

    ``entry`` is only meaningful when ``first_use`` is True. ``cache_error`` names a failure of the
    cache half alone (the replay half succeeded): the caller then mints (the cache fails open).
    """

    first_use: bool
    entry: bytes | None
    cache_error: str | None = None
    #: The entry was absent and this request took the mint lock in the same atomic step.
    locked: bool = False
    #: ``first_use`` is True because the jti was recorded with this same assertion's digest
    #: (``consume_and_lookup`` with ``reuse``): a client's allowed assertion reuse.
    reused: bool = False
    #: The DPoP proof's jti was recorded before: nothing was recorded (``first_use`` is False, the
    #: assertion is not spent).
    proof_replayed: bool = False
    #: The token signed ahead (``consume_and_lookup``'s ``new``) is now the entry, with its
    #: revocation pointer: the entry was absent and no mint lock held, in the same atomic step.
    stored: bool = False


class NewEntry(msgspec.Struct, frozen=True):
    """A token signed before the lookup, for ``consume_and_lookup`` to store if the entry is absent."""

    #: The cache entry's bytes (``app.service.token_cache.CacheEntry`` as JSON).
    entry: bytes
    #: The token's jti: its revocation pointer is written with it.
    token_jti: str
    #: The entry's time to live: the token's remaining lifetime.
    ttl_ms: int


#: ``ReplayGuard.record_reusable`` verdicts.
FIRST_USE, REUSED, REPLAYED = "first_use", "reused", "replayed"


def reuse_verdict(lookup: CacheLookup) -> str:
    """``ReplayGuard.record_reusable``'s answer from a ``consume_and_lookup`` made with ``reuse``."""
    if not lookup.first_use:
        return REPLAYED
    return REUSED if lookup.reused else FIRST_USE


class TokenStore(Protocol):
    """Issued-token cache, stampede lock and revocation list (RFC 7009 §2).

    Cache entries are addressed by ``(client_id, cache_id)``; ``cache_id`` comes from ``cache_id``.
    """

    def cache_id(self, client_id: str, scopes: tuple[str, ...], audience: str, registration_id: str, version: int,
                 kid: str, federation: FederatedIdentity | None = None, jkt: str | None = None) -> str:
        """The id of the one cache entry shared by every request these fields describe.

        Two requests that agree on all of them may be answered with the same token. Computing it
        costs a hash: do it once per request and pass it to the other methods.

        Args:
            client_id: The authenticated client.
            scopes: The granted scopes, sorted and unique (``Grant.scopes``).
            audience: The token's ``aud``.
            registration_id: The client's registration (new when a client_id is registered again).
            version: The registration's version (bumped by every admin change).
            kid: The signing key the token is (or would be) signed with.
            federation: The workload a federated client authenticated as: two workloads mapped to
                one client never share a token (each token names its workload).
            jkt: The DPoP proof key a bound token is for (RFC 9449 §6.1); None for a bearer token.

        Returns:
            An opaque string, unambiguous for any field values.
        """
        ...

    async def consume_and_lookup(
        self, client_id: str, jti: str, request_id: str, ttl_ms: int, cache_id: str | None, lock_ms: int = LOCK_MS,
        reuse: str | None = None, proof: ProofRecord | None = None, new: NewEntry | None = None,
    ) -> CacheLookup:
        """Record the assertion's jti and look the cache entry up, in one atomic call.

        Args:
            client_id, jti, request_id, ttl_ms: As for ``ReplayGuard.first_use``.
            cache_id: The entry to read; None when the grant was refused (only the jti is recorded).
            lock_ms: When the entry is absent, take the mint lock for this long.
            reuse: The assertion's digest when its client may re-send it (``record_reusable``):
                the same digest again is accepted (``CacheLookup.reused``).
            proof: The request's DPoP proof jti, recorded in the same call; one recorded before
                (``CacheLookup.proof_replayed``) records nothing, not even the assertion's jti.
            new: A token signed ahead: on first use, when the entry is absent and no mint lock is
                held, it becomes the entry (with its revocation pointer) in the same atomic step
                (``CacheLookup.stored``); otherwise nothing of it is written.

        Returns:
            The replay verdict, the entry if present, whether the lock was taken.

        Raises:
            StoreUnavailable: the replay half has no answer (the caller fails closed).
            QuotaExceeded: a request quota is set and this client has used it up in the current
                window; the jti was not recorded (first uses count toward the quota, replays do not).
        """
        ...

    async def read(self, client_id: str, cache_id: str) -> bytes | None:
        """Returns: the cache entry, or None."""
        ...

    async def lock_and_read(self, client_id: str, cache_id: str, owner: str, ttl_ms: int) -> tuple[bool, bytes | None]:
        """Take the mint lock (if free) for ``owner`` and read the entry, atomically.

        Returns:
            (whether this call took the lock, the entry or None).
        """
        ...

    async def unlock(self, client_id: str, cache_id: str) -> None:
        """Release the mint lock (whoever holds it)."""
        ...

    async def write(self, client_id: str, cache_id: str, token_jti: str, entry: bytes, ttl_ms: int) -> None:
        """Store the entry and the pointer from ``token_jti`` to it, and release the mint lock.

        Args:
            token_jti: The ``jti`` of the access token the entry holds (revocation finds it by that).
            entry: The encoded entry; ``ttl_ms``: its remaining lifetime.
        """
        ...

    async def revoke(self, client_id: str, token_jti: str, ttl_ms: int) -> None:
        """Mark the token revoked for ``ttl_ms`` (until it expires) and purge the entry that holds it."""
        ...

    async def is_revoked(self, client_id: str, token_jti: str) -> bool:
        """Returns: whether ``revoke`` marked this token and the mark has not expired."""
        ...


class NonceSecretStore(Protocol):
    async def nonce_secret(self, candidate: bytes) -> bytes:
        """The DPoP nonce secret shared by every replica: the stored one, or ``candidate`` stored
        now when there is none (atomically: concurrent first callers all get the same one)."""
        ...


class MemoryUsage(msgspec.Struct, frozen=True):
    """Redis memory as ``INFO memory`` reports it."""

    used: int
    #: ``maxmemory``; 0 means no limit is set.
    max: int
    #: ``maxmemory-policy`` (the broker needs ``noeviction``: an evicted replay record is a replay).
    policy: str


class MemoryProbe(Protocol):
    async def usage(self) -> MemoryUsage:
        """Returns: the memory of the Redis server (on a Cluster, the primary nearest its limit).

        Raises:
            StoreUnavailable: no answer, or the server refuses ``INFO`` (managed services may).
        """
        ...


class FailureCounter(Protocol):
    async def hit(self, subjects: Sequence[tuple[str, str, str | None]], window_ms: int,
                  amounts: Sequence[int] | None = None) -> list[tuple[int, int]]:
        """Count failures against each subject, atomically: one each, or ``amounts[i]`` toward
        subject ``i`` (the failures of several requests at once).

        A subject's window starts at its first failure and is never extended by later ones; every
        replica shares the counts.

        Args:
            subjects: ``(kind, value, once)``, e.g. ``("addr", "192.0.2.1", None)``,
                ``("client", "c1", signed_hash)``. With ``once`` set, the subject's count goes up
                by one (whatever its amount), and only if that same ``once`` was not counted
                toward it within ``window_ms``.
            window_ms: The window length.
            amounts: How much each subject without ``once`` goes up (default: one each).

        Returns:
            ``(count, ms_left)`` per subject, in order: failures in the current window and the
            time until it ends; ``(0, 0)`` for a subject not counted because of ``once``.
        """
        ...
