"""One store contract suite, run against every Redis the broker supports: embedded fakeredis, one
real redis-server, a real 3-node Cluster, and a Sentinel-managed master.

Each test calls the store classes the broker uses (``app.store.*``) through the same ``connect``
the broker uses, so a multi-key command that crosses Cluster slots, or a command Sentinel mode
cannot route, fails here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from app.oauth.clients import ClientRecord
from app.store.ratelimit import RedisFailureCounter
from app.store.redis import RedisClientRegistry, RedisJwksUriCache, RedisReplayGuard, connect
from app.store.token_cache import RedisTokenStore
from tests.conftest import _redis_binary
from tests.redis_topology import SentinelSetup, redis_cluster, running  # noqa: F401 (fixture)

OPTS = {"timeout": 1.0, "retries": 1}


@pytest.fixture(scope="module")
def redis_sentinel() -> Iterator[SentinelSetup]:
    with running(SentinelSetup(_redis_binary())) as setup:
        yield setup


@pytest.fixture(params=["fakeredis", *(pytest.param(kind, marks=pytest.mark.redis) for kind in ("redis", "cluster", "sentinel"))])
def target(request: Any) -> dict[str, Any]:
    """Keyword arguments for ``connect`` naming a fresh, empty Redis of each kind."""
    if request.param == "fakeredis":
        return {"url": None}
    if request.param == "redis":
        return {"url": request.getfixturevalue("real_redis").url}
    if request.param == "cluster":
        cluster = request.getfixturevalue("redis_cluster")
        cluster.flush()
        return {"url": cluster.url, "cluster": True}
    setup = request.getfixturevalue("redis_sentinel")
    from tests.redis_topology import _command

    _command(setup.sentinel_master_port(), "FLUSHALL")
    return {"url": None, "sentinels": (f"127.0.0.1:{setup.sentinel_port}",), "sentinel_master": setup.MASTER_NAME}


def run(target: dict[str, Any], body: Any) -> Any:
    async def main() -> Any:
        client = connect(target["url"], timeout=OPTS["timeout"], retries=OPTS["retries"],
                         cluster=target.get("cluster", False), sentinels=target.get("sentinels", ()),
                         sentinel_master=target.get("sentinel_master"))
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


def test_replay_guard(target: dict[str, Any]) -> None:
    async def body(client: Any) -> None:
        guard = RedisReplayGuard(client, **OPTS)
        assert await guard.first_use("c1", "j1", "req-a", 60_000) is True
        assert await guard.first_use("c1", "j1", "req-a", 60_000) is True  # our own retried write
        assert await guard.first_use("c1", "j1", "req-b", 60_000) is False  # a replay
        assert await guard.first_use("c2", "j1", "req-c", 60_000) is True  # jti is per client
        assert await guard.first_use("c1", "j2", "req-d", 60_000) is True

    run(target, body)


def test_client_registry(target: dict[str, Any]) -> None:
    async def body(client: Any) -> None:
        registry = RedisClientRegistry(client, **OPTS)
        assert await registry.ping() is True
        assert await registry.epoch() == 0
        registry.registry_id = await registry.create("reg-1")  # writes go to this registry only
        for cid in ("b", "a", "c"):
            await registry.put(ClientRecord(client_id=cid, scopes=("read",)))  # MULTI, one slot
        assert await registry.list_ids() == ["a", "b", "c"]
        assert await registry.epoch() == 3
        assert (await registry.get("a")).scopes == ("read",)
        assert await registry.delete("a") is True
        assert await registry.delete("a") is False
        assert await registry.get("a") is None
        assert await registry.list_ids() == ["b", "c"]
        assert await registry.epoch() == 5

    run(target, body)


def test_client_registry_marker_conditions_and_key_index(target: dict[str, Any]) -> None:
    """The marker and the one-key-one-client index live in the registry's one slot: every write is
    one script (Cluster: one hash tag), refused whole when a condition fails."""
    from app.oauth.clients import record_thumbprints, validate_client_jwks
    from app.store.base import CREATE, KeyShared, RegistryConflict, RegistryLost, RegistryPoll
    from tests.helpers import TestClient

    jwks = validate_client_jwks([TestClient("k").public_jwk()])
    (thumbprint,) = record_thumbprints(ClientRecord(client_id="x", jwks=jwks))

    async def body(client: Any) -> None:
        registry = RedisClientRegistry(client, **OPTS)
        assert await registry.poll() == RegistryPoll(0, None)
        with pytest.raises(RegistryLost):  # no registry known: nothing is written
            await registry.put(ClientRecord(client_id="a"))
        assert await registry.create("reg-1") == "reg-1"
        assert await registry.create("reg-2") == "reg-1"  # SET NX: the first one stays
        registry.registry_id = "reg-1"
        a = ClientRecord(client_id="a", registration_id="ra", jwks=jwks, version=1)
        await registry.put(a, CREATE)
        with pytest.raises(RegistryConflict, match="exists"):
            await registry.put(a, CREATE)
        with pytest.raises(KeyShared) as shared:
            await registry.put(ClientRecord(client_id="b", jwks=jwks), CREATE)
        assert (shared.value.thumbprint, shared.value.holder) == (thumbprint, "a")
        assert await registry.key_holders([thumbprint, "other"]) == {thumbprint: {"a": False}}
        await registry.put(ClientRecord(client_id="a", registration_id="ra", jwks=jwks, version=2), a)
        with pytest.raises(RegistryConflict, match="changed"):  # replaces only what was read
            await registry.put(ClientRecord(client_id="a", registration_id="ra", jwks=jwks, version=3), a)
        assert await registry.indexed_ids() == {"a"}
        assert await registry.delete("a") is True
        assert await registry.key_holders([thumbprint]) == {}  # the key is free again
        await registry.put(ClientRecord(client_id="b", jwks=jwks), CREATE)
        assert await registry.poll() == RegistryPoll(4, "reg-1")
        await client.delete("{tb:registry}:id")  # the registry is lost: no write lands in it
        with pytest.raises(RegistryLost):
            await registry.delete("b")
        assert await registry.poll() == RegistryPoll(4, None)

    run(target, body)


def test_token_store(target: dict[str, Any]) -> None:
    async def body(client: Any) -> None:
        store = RedisTokenStore(client, **OPTS)
        # One script over the replay record, the entry and the mint lock (one client hash tag).
        first = await store.consume_and_lookup("c1", "j1", "req-a", 60_000, "cache-1")
        assert (first.first_use, first.entry, first.locked) == (True, None, True)
        second = await store.consume_and_lookup("c1", "j2", "req-b", 60_000, "cache-1")
        assert (second.first_use, second.entry, second.locked) == (True, None, False)  # lock held
        await store.write("c1", "cache-1", "tok-1", b"entry-bytes", 60_000)
        hit = await store.consume_and_lookup("c1", "j3", "req-c", 60_000, "cache-1")
        assert (hit.first_use, hit.entry) == (True, b"entry-bytes")
        assert (await store.consume_and_lookup("c1", "j3", "req-d", 60_000, "cache-1")).first_use is False
        assert (await store.consume_and_lookup("c1", "j3", "req-e", 60_000, None)).first_use is False
        assert (await store.consume_and_lookup("c1", "j3", "req-c", 60_000, None)).first_use is True  # own retry
        assert await store.read("c1", "cache-1") == b"entry-bytes"
        assert await store.lock_and_read("c1", "cache-2", "owner-a", 2_000) == (True, None)
        assert await store.lock_and_read("c1", "cache-2", "owner-b", 2_000) == (False, None)
        assert await store.is_revoked("c1", "tok-1") is False
        await store.revoke("c1", "tok-1", 60_000)
        assert await store.is_revoked("c1", "tok-1") is True
        assert await store.read("c1", "cache-1") is None  # revocation purged the cached entry

    run(target, body)


@pytest.mark.parametrize("quota", [0, 5], ids=["no quota", "quota"])
@pytest.mark.parametrize("reuse", [None, "digest-1"], ids=["plain", "reuse"])
@pytest.mark.parametrize("proof", [False, True], ids=["bearer", "dpop"])
def test_token_store_with_a_token_signed_ahead(target: dict[str, Any], quota: int, reuse: str | None,
                                               proof: bool) -> None:
    """``consume_and_lookup`` with ``new``: stored with its revocation pointer when the entry is
    absent and no lock is held, in every variant of the script (quota, reuse, DPoP proof);
    nothing of it written when the entry exists, the lock is held, or the jti or proof is replayed."""
    from app.store.base import NewEntry, ProofRecord

    def record(n: int) -> ProofRecord | None:
        return ProofRecord("jkt-1", f"proof-{n}", 60_000) if proof else None

    async def body(client: Any) -> None:
        store = RedisTokenStore(client, quota=quota, **OPTS)
        ahead = NewEntry(b"entry-a", "tok-a", 60_000)
        stored = await store.consume_and_lookup("c1", "j1", "req-a", 60_000, "cache-1", reuse=reuse, proof=record(1),
                                                new=ahead)
        assert (stored.first_use, stored.entry, stored.locked, stored.stored) == (True, None, False, True)
        assert await store.read("c1", "cache-1") == b"entry-a"
        # The entry exists: it comes back, the new one is not written.
        found = await store.consume_and_lookup("c1", "j2", "req-b", 60_000, "cache-1", reuse=reuse, proof=record(2),
                                               new=NewEntry(b"entry-b", "tok-b", 60_000))
        assert (found.first_use, found.entry, found.stored) == (True, b"entry-a", False)
        # A replayed jti (for a reusing client: another assertion with that jti), then a replayed
        # proof: nothing written.
        replayed = await store.consume_and_lookup("c1", "j1", "req-c", 60_000, "cache-2",
                                                  reuse=reuse and "digest-2", proof=record(3),
                                                  new=NewEntry(b"entry-c", "tok-c", 60_000))
        assert (replayed.first_use, replayed.stored) == (False, False)
        if proof:
            again = await store.consume_and_lookup("c1", "j4", "req-d", 60_000, "cache-2", reuse=reuse,
                                                   proof=record(1), new=NewEntry(b"entry-d", "tok-d", 60_000))
            assert (again.proof_replayed, again.stored) == (True, False)
        assert await store.read("c1", "cache-2") is None
        # Another request holds the mint lock: it is minting, nothing written, no lock taken.
        assert await store.lock_and_read("c1", "cache-3", "owner-x", 2_000) == (True, None)
        held = await store.consume_and_lookup("c1", "j5", "req-e", 60_000, "cache-3", reuse=reuse, proof=record(5),
                                              new=NewEntry(b"entry-e", "tok-e", 60_000))
        assert (held.first_use, held.entry, held.locked, held.stored) == (True, None, False, False)
        assert await store.read("c1", "cache-3") is None
        # The stored token's revocation pointer was written with it: revoking purges the entry.
        await store.revoke("c1", "tok-a", 60_000)
        assert await store.read("c1", "cache-1") is None

    run(target, body)


def test_failure_counter(target: dict[str, Any]) -> None:
    async def body(client: Any) -> None:
        counter = RedisFailureCounter(client, **OPTS)
        subjects = [("addr", "x", None), ("client", "y", "signed-1")]
        first = await counter.hit(subjects, 60_000)
        second = await counter.hit(subjects, 60_000)  # the same "once": not counted toward y again
        third = await counter.hit([("addr", "x", None), ("client", "y", "signed-2")], 60_000)
        assert [count for count, _ in first] == [1, 1]
        assert second == [(2, second[0][1]), (0, 0)]
        assert [count for count, _ in third] == [3, 2]
        assert all(0 < ttl <= 60_000 for _, ttl in third)
        # Several requests' failures in one call: the address by its amount, a signed content by one.
        fourth = await counter.hit([("addr", "x", None), ("client", "y", "signed-3")], 60_000, [5, 7])
        assert [count for count, _ in fourth] == [8, 3]
        assert all(0 < ttl <= 60_000 for _, ttl in fourth)

    run(target, body)


def test_jwks_uri_cache(target: dict[str, Any]) -> None:
    async def body(client: Any) -> None:
        cache = RedisJwksUriCache(client, **OPTS)
        uri = "https://client.example.test/jwks.json"
        assert await cache.get("c1", uri) is None
        await cache.put("c1", uri, b'{"keys":[]}', 60)
        assert await cache.get("c1", uri) == b'{"keys":[]}'
        assert await cache.get("c1", uri + "?other") is None
        assert await cache.claim_refetch("c1", uri, 10_000) is True
        assert await cache.claim_refetch("c1", uri, 10_000) is False

    run(target, body)


def test_trust_store(target: dict[str, Any]) -> None:
    """Trusted issuers live with the registry: marker-checked writes that bump the epoch."""
    from app.oauth.trust import MAX_ISSUERS, trusted_issuer
    from app.store.base import RegistryConflict, RegistryLost
    from app.store.trust import RedisTrustStore

    def issuer(n: int) -> Any:
        return trusted_issuer({"issuer": f"https://issuer{n}.example.test",
                               "rules": [{"client_id": "c1", "sub": f"system:serviceaccount:ns:sa{n}"}]})

    async def body(client: Any) -> None:
        registry = RedisClientRegistry(client, **OPTS)
        trust = RedisTrustStore(client, registry=registry, **OPTS)
        with pytest.raises(RegistryLost):  # no registry known yet: refused, nothing written
            await trust.put_issuer(issuer(1))
        registry.registry_id = await registry.create("reg-1")
        await trust.put_issuer(issuer(2))
        await trust.put_issuer(issuer(1))
        assert await registry.epoch() == 2
        assert await trust.get_issuer("https://issuer1.example.test") == issuer(1)
        assert await trust.get_issuer("https://issuer9.example.test") is None
        assert [r.issuer for r in await trust.list_issuers()] == ["https://issuer1.example.test",
                                                                   "https://issuer2.example.test"]
        assert await trust.delete_issuer("https://issuer2.example.test") is True
        assert await trust.delete_issuer("https://issuer2.example.test") is False
        assert await registry.epoch() == 3  # a delete of nothing changes nothing
        for n in range(2, MAX_ISSUERS + 1):
            await trust.put_issuer(issuer(n))
        with pytest.raises(RegistryConflict) as full:
            await trust.put_issuer(issuer(MAX_ISSUERS + 1))
        assert full.value.reason == "full"
        await trust.put_issuer(issuer(1))  # replacing a stored one is not a new one
        await client.delete("{tb:registry}:id")  # the registry is lost: writes refused
        with pytest.raises(RegistryLost):
            await trust.put_issuer(issuer(1))
        with pytest.raises(RegistryLost):
            await trust.delete_issuer("https://issuer1.example.test")

    run(target, body)
