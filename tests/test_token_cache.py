"""Issued-token cache (docs/token-cache.md): reuse, freshness, isolation (docs/attack-matrix.md,
"Issued-token cache", and `cache-store-fails-open`), stampede, renewal.

In-process broker on fakeredis with a frozen clock, plus one real-Redis test where an ACL user may
not touch the cache keys at all (the cache fails open, the replay check still works).
"""

from __future__ import annotations

import asyncio
import heapq
import os
import re

import msgspec
import pytest

from app.config import Settings
from app.keystore import generate_private_key
from app.metrics import Metrics
from app.oauth.access_token import AccessTokenClaims, TokenSigner
from app.oauth.grant import Grant
from app.service.client_auth import EndpointRequest
from app.service.token_cache import HITS, LOCK_MS, MINTED, MISSES, STAMPEDE_WAITS, CacheEntry, TokenCache
from app.store import keyspace
from app.store.base import CacheLookup
from tests.conftest import Broker
from tests.expect import assert_error, assert_invalid_client, assert_token
from tests.helpers import ISS, RS1, RS2, TestClient, decode_unverified, form

LIFETIME = 300  # the broker fixture's token_lifetime


def _redis(broker: Broker):
    return broker.app.state.token_cache.store.redis


def entry_keys(broker: Broker) -> list[bytes]:
    return sorted(broker.call(_redis(broker).keys, "*:entry:*"))


def metric(broker: Broker, name: str, **labels: str) -> float:
    return broker.app.state.metrics.value(name, **labels)


def minted(broker: Broker) -> list[dict]:
    return [e for e in broker.logs() if e.get("event") == "token.issued" and e.get("cache") == "mint"]


def tok(broker: Broker, client: TestClient, **params: str) -> dict:
    return assert_token(broker.get_token(client, **params))


# -- reuse and freshness ---------------------------------------------------------------------------


def test_second_request_is_served_from_cache_with_remaining_life(broker, c1):
    first = tok(broker, c1)
    assert first["expires_in"] == LIFETIME
    broker.clock.advance(100)
    second = tok(broker, c1)
    assert second["access_token"] == first["access_token"]
    assert second["expires_in"] == LIFETIME - 100  # the served token's own exp - now (attack matrix: `cache-invalidation`)
    assert len(minted(broker)) == 1
    assert (metric(broker, HITS), metric(broker, MISSES, reason="absent"), metric(broker, MINTED)) == (1, 1, 1)
    issued = [e for e in broker.logs() if e.get("event") == "token.issued"]
    assert [e["cache"] for e in issued] == ["mint", "hit"]
    assert "access_token" not in broker.log_text() and first["access_token"] not in broker.log_text()


@pytest.mark.parametrize(
    ("elapsed", "served_from_cache"),
    [(0, True), (149, True), (150, True), (151, False), (299, False), (300, False), (10_000, False)],
    ids=["fresh", "just-over-half", "exactly-half", "under-half", "last-second", "at-exp", "clock-jump-past-exp"],
)
def test_entry_served_only_with_half_its_lifetime_left(broker, c1, elapsed, served_from_cache):
    first = tok(broker, c1)
    broker.clock.advance(elapsed)
    second = tok(broker, c1)
    assert (second["access_token"] == first["access_token"]) is served_from_cache
    assert second["expires_in"] == (LIFETIME - elapsed if served_from_cache else LIFETIME)


def test_min_remaining_share_is_configurable(tmp_path, clock):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, cache_min_remaining_share=0.9)
    with Broker(settings, clock) as b:
        client = TestClient("c1")
        b.register(client)
        first = tok(b, client)
        clock.advance(30)
        assert tok(b, client)["access_token"] == first["access_token"]
        clock.advance(1)
        assert tok(b, client)["access_token"] != first["access_token"]


def test_stale_entry_is_replaced_by_the_new_mint(broker, c1):
    first = tok(broker, c1)
    broker.clock.advance(200)
    second = tok(broker, c1)
    broker.clock.advance(10)
    third = tok(broker, c1)
    assert first["access_token"] != second["access_token"] == third["access_token"]
    assert len(entry_keys(broker)) == 1


# -- isolation (attack matrix: `cache-cross-client`, `cache-scope-and-resource`, `cache-key-injection`) ---


def test_cross_client_never_shares(broker, c1):
    """`cache-cross-client`: C2 with the identical scope and resource gets its own token."""
    c2 = TestClient("c2", alg="PS256")
    broker.register(c2)
    t1 = tok(broker, c1, scope="read", resource=RS1)["access_token"]
    t2 = tok(broker, c2, scope="read", resource=RS1)["access_token"]
    assert t1 != t2
    claims = decode_unverified(t2)[1]
    assert (claims["sub"], claims["client_id"]) == ("c2", "c2")


@pytest.mark.parametrize(
    ("first", "second", "same"),
    [
        ({"scope": "read"}, {"scope": "read write"}, False),
        ({"scope": "read write"}, {"scope": "read"}, False),
        ({"scope": "read"}, {"scope": "write"}, False),
        ({"scope": "write read"}, {"scope": "read write"}, True),
        ({"scope": "read read write"}, {"scope": "write read"}, True),
        ({}, {"scope": "read"}, True),  # the default scope is "read"
        ({"resource": RS1}, {"resource": RS2}, False),
        ({}, {"resource": RS1}, True),  # the default audience is RS1
    ],
    ids=["read-vs-readwrite", "readwrite-vs-read", "read-vs-write", "order", "duplicates", "default-scope",
         "rs1-vs-rs2", "default-audience"],
)
def test_scope_and_audience_isolation(broker, c1, first, second, same):
    """`cache-scope-and-resource`: canonical scope sets share an entry; anything else never does."""
    a = tok(broker, c1, **first)
    b = tok(broker, c1, **second)
    assert (a["access_token"] == b["access_token"]) is same
    claims = decode_unverified(b["access_token"])[1]
    assert claims["scope"] == b["scope"]
    assert claims["aud"] == second.get("resource", RS1)


def test_cache_key_injection(broker):
    """`cache-key-injection`: client ``a:b`` + scope ``c`` vs client ``a`` + scope ``b:c`` (and friends) never collide."""
    ab = TestClient("a:b", scopes=("c",), default_scopes=("c",))
    a = TestClient("a", scopes=("b:c",), default_scopes=("b:c",))
    broker.register(ab)
    broker.register(a)
    t_ab = tok(broker, ab)["access_token"]
    t_a = tok(broker, a)["access_token"]
    assert t_ab != t_a
    assert decode_unverified(t_a)[1]["client_id"] == "a"
    ids = {
        keyspace.token_cache_id("a:b", ("c",), RS1, "r", 1, "k"),
        keyspace.token_cache_id("a", ("b:c",), RS1, "r", 1, "k"),
        keyspace.token_cache_id("a", ("b", "c"), RS1, "r", 1, "k"),
        keyspace.token_cache_id("a", ("b c",), RS1, "r", 1, "k"),
        keyspace.token_cache_id("a", ("b",), "c|" + RS1, "r", 1, "k"),
        keyspace.token_cache_id("a\n", ("b",), RS1, "r", 1, "k"),
        keyspace.token_cache_id("a", ("b",), RS1, "r", 11, "k"),
        keyspace.token_cache_id("a", ("b",), RS1, "r", 1, "1k"),
        keyspace.token_cache_id("a", ("b",), RS1, "r1", 1, "k"),
    }
    assert len(ids) == 9


ID_INPUTS = [
    ("plain", ("a", ("b",), RS1, "r", 1, "k", None, None)),
    ("client-with-colon", ("a:b", ("c",), RS1, "r", 1, "k", None, None)),
    ("two-scopes", ("a", ("b", "c"), RS1, "r", 1, "k", None, None)),
    ("other-version", ("a", ("b",), RS1, "r", 2, "k", None, None)),
    ("other-kid", ("a", ("b",), RS1, "r", 1, "k2", None, None)),
    ("dpop-bound", ("a", ("b",), RS1, "r", 1, "k", None, "thumbprint")),
    ("federated", ("a", ("b",), RS1, "r", 1, "k", ("https://issuer", "workload"), None)),
]


def test_store_cache_id_is_the_keyspace_id_memo_or_not(broker):
    """Each grant's id is remembered (``keyspace.token_cache_id``, a bounded LRU memo): every id
    the store answers, first time, again, and after the memo filled up, is the one worked out anew."""
    from app.oauth.access_token import FederatedIdentity

    store = broker.app.state.token_cache.store
    plain_id = keyspace.token_cache_id.__wrapped__
    bound = keyspace.token_cache_id.cache_info().maxsize

    def both(inputs):
        client_id, scopes, aud, reg, version, kid, fed, jkt = inputs
        identity = None if fed is None else FederatedIdentity(iss=fed[0], sub=fed[1])
        return (store.cache_id(client_id, scopes, aud, reg, version, kid, identity, jkt),
                plain_id(client_id, scopes, aud, reg, version, kid, fed, jkt))

    for _ in range(2):
        ids = [both(inputs) for _, inputs in ID_INPUTS]
        assert [memo for memo, _ in ids] == [plain for _, plain in ids]
        assert len({memo for memo, _ in ids}) == len(ID_INPUTS)
    for n in range(bound + 10):  # past the bound: the oldest forgotten, never wrong
        memo, plain = both((f"c{n}", ("b",), RS1, "r", 1, "k", None, None))
        assert memo == plain
    assert keyspace.token_cache_id.cache_info().currsize <= bound
    assert [both(inputs)[0] for _, inputs in ID_INPUTS] == [plain for _, plain in ids]
    assert store.cache_id("a", ("b",), RS1, "r", True, "k") == plain_id("a", ("b",), RS1, "r", True, "k") != \
        store.cache_id("a", ("b",), RS1, "r", 1, "k")


# -- a warm cache never bypasses authentication (attack matrix: `cache-after-authentication`) -----------


@pytest.mark.parametrize(
    "bad",
    ["replayed", "expired", "forged", "wrong-aud", "other-client-key"],
)
def test_warm_cache_does_not_bypass_authentication(broker, c1, bad):
    now = broker.clock.now
    used = c1.assertion(now)
    tok(broker, c1)
    assert_token(broker.token(form(used)))
    assertion = {
        "replayed": used,
        "expired": c1.assertion(now, exp=now - 20, iat=now - 60),
        "forged": c1.assertion(now, key=generate_private_key("ES256")),
        "wrong-aud": c1.assertion(now, aud=ISS + "/token"),
        "other-client-key": TestClient("c1", kid="c1-1").assertion(now),
    }[bad]
    assert_invalid_client(broker.token(form(assertion)))
    assert metric(broker, HITS) == 1  # only the genuine second request


# -- invalidation (attack matrix: `cache-invalidation`) ----------------------------------------------


def test_disabled_client_is_refused_and_reenabled_client_gets_a_new_token(broker, c1):
    first = tok(broker, c1)["access_token"]
    broker.update("c1", enabled=False)
    assert_invalid_client(broker.get_token(c1))
    broker.update("c1", enabled=True)
    assert tok(broker, c1)["access_token"] != first


def test_scopes_reduced(broker, c1):
    both = tok(broker, c1, scope="read write")["access_token"]
    read = tok(broker, c1, scope="read")["access_token"]
    broker.update("c1", scopes=["read"])
    assert_error(broker.get_token(c1, scope="read write"), 400, "invalid_scope")
    fresh = tok(broker, c1, scope="read")["access_token"]
    assert fresh not in (both, read)


def test_client_key_removed(broker, c1):
    first = tok(broker, c1)["access_token"]
    k2 = TestClient("c1", kid="c1-2")
    broker.update("c1", jwks={"keys": [c1.public_jwk(), k2.public_jwk()]})
    second = tok(broker, k2)["access_token"]
    assert second != first  # every registration change is a new version
    assert tok(broker, c1)["access_token"] == second
    broker.update("c1", jwks={"keys": [k2.public_jwk()]})
    assert_invalid_client(broker.get_token(c1))
    assert tok(broker, k2)["access_token"] != second


def test_version_changes_within_one_second(broker, c1):
    """Two changes in the same (frozen) second still give two versions, so two cache keys."""
    v0 = broker.call(broker.app.state.registry.get, "c1").version
    broker.update("c1", scopes=["read", "write"])
    broker.update("c1", scopes=["read", "write"])
    assert broker.call(broker.app.state.registry.get, "c1").version == v0 + 2


def _grant() -> Grant:
    return Grant("c1", ("read",), RS1, LIFETIME)


def test_signing_key_change_is_a_miss(broker, c1):
    """A retired or replaced signing key: another kid is another key, and the entry re-check fails."""
    cache = broker.app.state.token_cache
    old = broker.app.state.signer()
    key = generate_private_key("ES256")
    new = TokenSigner(key, key.thumbprint(), "ES256")
    assert cache.cache_id(_grant(), 1, old) != cache.cache_id(_grant(), 1, new)
    now = int(broker.clock.now)
    claims = AccessTokenClaims(ISS, "c1", "c1", RS1, "read", "j" * 22, now, now + LIFETIME)
    entry = msgspec.json.encode(CacheEntry(old.sign(claims), claims.jti, now, now + LIFETIME))
    assert cache.check(entry, _grant(), old, now)[1] == "hit"
    assert cache.check(entry, _grant(), new, now) == (None, "mismatch")


class _CountingSigner(TokenSigner):
    """The broker's signer, counting how often a token's signing input is rebuilt (the cache check)."""

    def __init__(self, signer: TokenSigner) -> None:
        super().__init__(signer._key, signer.kid, signer.alg)
        self.rebuilt = 0

    def signing_input(self, claims: AccessTokenClaims) -> bytes:
        self.rebuilt += 1
        return super().signing_input(claims)


def test_checked_entry_bytes_are_not_rebuilt_but_their_times_are_checked(broker, c1):
    """The same entry bytes read again under the same id: served without rebuilding the token,
    but no longer once stale; under another id (another grant) the same bytes are checked in full."""
    cache = broker.app.state.token_cache
    signer = _CountingSigner(broker.app.state.signer())
    now = int(broker.clock.now)
    claims = AccessTokenClaims(ISS, "c1", "c1", RS1, "read", "j" * 22, now, now + LIFETIME)
    raw = msgspec.json.encode(CacheEntry(signer.sign(claims), claims.jti, now, now + LIFETIME))
    grant = _grant()
    cache_id = cache.cache_id(grant, 1, signer)
    lookup = CacheLookup(True, raw)

    def issue(g: Grant, cid: str, at: float) -> tuple[CacheEntry, str]:
        return broker.call(cache.issue, g, signer, cid, lookup, at, "rid")

    signer.rebuilt = 0
    assert issue(grant, cache_id, now)[1] == "hit"
    assert issue(grant, cache_id, now + 10)[1] == "hit"
    assert signer.rebuilt == 1
    # past half its lifetime: not served from memory either (a new token is minted)
    assert issue(grant, cache_id, now + LIFETIME * 0.6)[1] == "mint"
    # the same bytes under another grant's id: checked in full, a mismatch
    other = msgspec.structs.replace(grant, scopes=("read", "write"))
    assert issue(other, cache.cache_id(other, 1, signer), now)[1] == "mint"


def redis_calls(broker: Broker) -> dict[str, int]:
    """Redis calls so far by ``op`` (``broker_redis_duration_seconds_count``)."""
    text = broker.app.state.metrics.render().decode()
    return {m[1]: int(float(m[2])) for m in re.finditer(r'broker_redis_duration_seconds_count\{op="([^"]+)"\} (\S+)', text)}


def _diff(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {op: n - before.get(op, 0) for op, n in after.items() if n != before.get(op, 0)}


def test_a_cold_miss_is_one_store_call_and_hits_sign_nothing(broker, c1, monkeypatch):
    """A grant this process served no fresh token for: the token is signed before the lookup and
    stored by it (one Redis call, no cache write after); while that token is fresh, requests sign
    nothing ahead; once it is stale, the token signed ahead is the one minted (one signature)."""
    signed: list[str] = []
    sign = TokenSigner.sign

    def counting(self: TokenSigner, claims: AccessTokenClaims) -> str:
        signed.append(claims.jti)
        return sign(self, claims)

    monkeypatch.setattr(TokenSigner, "sign", counting)
    tok(broker, c1, resource=RS2)  # the client's record now in this process (another grant, another entry)
    signed.clear()
    before = redis_calls(broker)
    first = tok(broker, c1)
    assert _diff(before, redis_calls(broker)) == {"replay": 1}
    assert len(signed) == 1 and len(minted(broker)) == 2 and metric(broker, MINTED) == 2
    stored = [msgspec.json.decode(broker.call(_redis(broker).get, key))["access_token"] for key in entry_keys(broker)]
    assert first["access_token"] in stored

    before = redis_calls(broker)
    assert tok(broker, c1)["access_token"] == first["access_token"]
    assert _diff(before, redis_calls(broker)) == {"replay": 1}
    assert len(signed) == 1 and metric(broker, HITS) == 1

    broker.clock.advance(200)  # past half the lifetime: stale, still in Redis
    renewed = tok(broker, c1)["access_token"]
    assert renewed != first["access_token"]
    assert len(signed) == 2 and metric(broker, MINTED) == 3
    assert tok(broker, c1)["access_token"] == renewed and len(signed) == 2


def test_a_replay_signed_ahead_serves_and_stores_nothing(broker, c1):
    assertion = c1.assertion(broker.clock.now)
    first = assert_token(broker.token(form(assertion, scope="read")))
    broker.call(_redis(broker).delete, *entry_keys(broker))
    broker.app.state.token_cache._served.clear()  # a process that never served this grant: it signs ahead
    assert_invalid_client(broker.token(form(assertion, scope="read")))
    assert entry_keys(broker) == [] and metric(broker, MINTED) == 1
    assert tok(broker, c1)["access_token"] != first["access_token"]


# -- corrupt or poisoned entries and cache faults (attack matrix: `cache-poisoned-entry`, `cache-store-fails-open`) ---


def _planted(broker: Broker, other: TestClient) -> dict[str, bytes]:
    now = int(broker.clock.now)
    signer = broker.app.state.signer()

    def entry(claims: AccessTokenClaims, **over: object) -> bytes:
        data = {"access_token": signer.sign(claims), "jti": claims.jti, "iat": claims.iat, "exp": claims.exp, **over}
        return msgspec.json.encode(data)

    mine = AccessTokenClaims(ISS, "c1", "c1", RS1, "read", "planted-jti-000000000", now, now + LIFETIME)
    return {
        "garbage": os.urandom(64),
        "not-json": b"{not json",
        "wrong-schema": b'{"token": "x", "exp": 1}',
        "extra-field": entry(mine, scope="read"),
        "string-exp": entry(mine, exp=str(mine.exp)),
        "other-clients-token": entry(AccessTokenClaims(ISS, other.client_id, other.client_id, RS1, "read", mine.jti, now, now + LIFETIME)),
        "other-scope": entry(AccessTokenClaims(ISS, "c1", "c1", RS1, "read write", mine.jti, now, now + LIFETIME)),
        "other-audience": entry(AccessTokenClaims(ISS, "c1", "c1", RS2, "read", mine.jti, now, now + LIFETIME)),
        "fields-lie-about-token": entry(mine, jti="another-jti-0000000000"),
        "expired": entry(AccessTokenClaims(ISS, "c1", "c1", RS1, "read", mine.jti, now - 400, now - 100)),
        "iat-in-future": entry(AccessTokenClaims(ISS, "c1", "c1", RS1, "read", mine.jti, now + 100, now + 400)),
        "bad-signature-charset": msgspec.json.encode(
            {"access_token": signer.sign(mine)[:-2] + "*=", "jti": mine.jti, "iat": mine.iat, "exp": mine.exp}),
    }


POISON = ["garbage", "not-json", "wrong-schema", "extra-field", "string-exp", "other-clients-token", "other-scope",
          "other-audience", "fields-lie-about-token", "expired", "iat-in-future", "bad-signature-charset"]


@pytest.mark.parametrize("kind", POISON, ids=POISON)
def test_poisoned_entry_is_a_miss_and_is_overwritten(broker, c1, kind):
    c2 = TestClient("c2")
    broker.register(c2)
    first = tok(broker, c1)["access_token"]
    (key,) = entry_keys(broker)
    broker.call(_redis(broker).set, key, _planted(broker, c2)[kind])
    second = tok(broker, c1)
    claims = decode_unverified(second["access_token"])[1]
    assert (claims["client_id"], claims["scope"], claims["aud"], second["expires_in"]) == ("c1", "read", RS1, LIFETIME)
    assert second["access_token"] != first
    assert tok(broker, c1)["access_token"] == second["access_token"]  # overwritten: served again
    assert len(minted(broker)) == 2


def test_wrong_type_at_cache_key_fails_open(broker, c1):
    """`cache-store-fails-open`: the cache half of the pipeline errors (WRONGTYPE) while the replay half works."""
    tok(broker, c1)
    (key,) = entry_keys(broker)
    broker.call(_redis(broker).delete, key)
    broker.call(_redis(broker).lpush, key, b"x")
    t = tok(broker, c1)["access_token"]
    assert metric(broker, MISSES, reason="error") == 1
    assert tok(broker, c1)["access_token"] == t  # SET replaced the list
    assert any(e.get("event") == "token_cache.read_failed" for e in broker.logs())


@pytest.mark.redis
def test_cache_keys_forbidden_by_acl_fail_open_replay_still_fails_closed(real_redis, tmp_path, clock):
    """`cache-store-fails-open` on a real Redis: an ACL user that may touch only the registry and replay keys.

    Every cache command (read, lock, write) is refused with NOPERM: tokens are still issued
    (minted each time) and a replayed assertion is still refused.
    """
    from redis.asyncio import Redis

    real_redis.command("ACL", "SETUSER", "nocache", "reset", "on", ">pw", "~{tb:registry}*", "~{tb:tok:*}:replay:*", "~tb:fail*",
                       "+@all")
    try:
        client = Redis.from_url(f"redis://nocache:pw@127.0.0.1:{real_redis.port}/0", socket_timeout=1)
        settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, redis_url=real_redis.url)
        with Broker(settings, clock, redis=client) as b:
            c = TestClient("c1")
            b.register(c)
            assertion = c.assertion(clock.now)
            t1 = assert_token(b.token(form(assertion)))["access_token"]
            t2 = tok(b, c)["access_token"]
            assert t1 != t2
            assert_invalid_client(b.token(form(assertion)))
            events = {e.get("event") for e in b.logs()}
            assert {"token_cache.read_failed", "token_cache.lock_failed", "token_cache.write_failed"} <= events
            b.call(client.aclose)
    finally:
        real_redis.command("ACL", "DELUSER", "nocache")


@pytest.mark.redis
def test_replay_store_down_is_503_even_with_a_warm_cache(real_redis, tmp_path, clock):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, redis_url=real_redis.url)
    with Broker(settings, clock) as b:
        c = TestClient("c1")
        b.register(c)
        tok(b, c)
        real_redis.pause()
        try:
            r = b.get_token(c)
        finally:
            real_redis.resume()
        assert_error(r, 503, "temporarily_unavailable")
        assert r.headers["retry-after"] == "2"
        tok(b, c)


# -- stampede -----------------------------------------------------------------------------------------


def test_concurrent_misses_in_one_process_mint_once(broker, c1, monkeypatch):
    """40 cold requests at once in one process: one signature (the first signs ahead and its
    lookup stores it; the others expect a hit, and their lookups, sent after, find it)."""
    signed: list[str] = []
    sign = TokenSigner.sign
    monkeypatch.setattr(TokenSigner, "sign", lambda self, claims: signed.append(claims.jti) or sign(self, claims))
    service = broker.app.state.token_service
    bodies = [form(c1.assertion(broker.clock.now)) for _ in range(40)]

    async def burst() -> list[bytes]:
        import httpx

        return await asyncio.gather(*[
            service.token(EndpointRequest(str(httpx.QueryParams(b)).encode(), "application/x-www-form-urlencoded",
                                          False, f"r{i}", None))
            for i, b in enumerate(bodies)
        ])

    results = [msgspec.json.decode(r) for r in broker.call(burst)]
    assert len({r["access_token"] for r in results}) == 1
    assert len(minted(broker)) == 1 and len(signed) == 1
    assert metric(broker, STAMPEDE_WAITS, via="process") + metric(broker, HITS) == 39


@pytest.mark.redis
def test_a_cold_burst_in_one_process_signs_once_on_real_redis(real_redis, tmp_path, clock, monkeypatch):
    """The same burst where every store call really waits on Redis: the first request signs ahead,
    the 39 others (their lookups sent after its) expect its token and find it stored."""
    import httpx

    signed: list[str] = []
    sign = TokenSigner.sign
    monkeypatch.setattr(TokenSigner, "sign", lambda self, claims: signed.append(claims.jti) or sign(self, claims))
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", token_lifetime=300, redis_url=real_redis.url)
    with Broker(settings, clock) as b:
        client = TestClient("c1", alg="ES256", kid="c1-1")
        b.register(client)
        tok(b, client, resource=RS2)  # the client's record in this process (another entry)
        signed.clear()
        bodies = [str(httpx.QueryParams(form(client.assertion(clock.now)))).encode() for _ in range(40)]

        async def burst() -> list[bytes]:
            return await asyncio.gather(*[b.app.state.token_service.token(EndpointRequest(
                body, "application/x-www-form-urlencoded", False, f"r{i}", None)) for i, body in enumerate(bodies)])

        results = [msgspec.json.decode(r) for r in b.call(burst)]
        outcomes = [e["cache"] for e in b.logs() if e.get("event") == "token.issued" and e.get("scope") == "read"
                    and e.get("aud") == RS1]
    assert len({r["access_token"] for r in results}) == 1
    assert len(signed) == 1
    assert sorted(outcomes) == ["hit"] * 39 + ["mint"]


def _lock_key(broker: Broker, client_id: str = "c1") -> tuple[str, str]:
    record = broker.call(broker.app.state.registry.get, client_id)
    cid = keyspace.token_cache_id(client_id, ("read",), RS1, record.registration_id, record.version,
                                  broker.app.state.signer().kid)
    return keyspace.token_lock(client_id, cid), keyspace.token_entry(client_id, cid)


def test_lock_held_by_another_replica_then_its_entry_appears(broker, c1):
    lock, entry_key = _lock_key(broker)
    broker.call(_redis(broker).psetex, lock, 2000, b"other-replica")
    now = int(broker.clock.now)
    registration = broker.call(broker.app.state.registry.get, "c1").registration_id  # a replica's jti names it
    claims = AccessTokenClaims(ISS, "c1", "c1", RS1, "read", registration + ".from-the-other-replica", now, now + LIFETIME)
    theirs = broker.app.state.signer().sign(claims)

    async def other_replica_writes() -> None:
        await asyncio.sleep(0.06)
        await _redis(broker).set(entry_key, msgspec.json.encode(CacheEntry(theirs, claims.jti, now, now + LIFETIME)))

    async def run() -> None:
        writer = asyncio.create_task(other_replica_writes())
        try:
            body = await broker.app.state.token_service.token(EndpointRequest(
                str(__import__("httpx").QueryParams(form(c1.assertion(now)))).encode(),
                "application/x-www-form-urlencoded", False, "r1", None))
        finally:
            await writer
        assert msgspec.json.decode(body)["access_token"] == theirs

    broker.call(run)
    assert minted(broker) == []
    assert metric(broker, STAMPEDE_WAITS, via="replica") == 1


def test_lock_holder_answered_after_a_waiter_in_its_own_process_still_mints(broker, c1):
    """The CI failure of 2026-11-26, replayed in order (two replicas, one Redis, 2 x 30 misses).

    Replica A's lock holder (L) and a request that lost the lock to it (F) run their lookups; A's
    event loop happens to resume F first, so F starts A's single flight and polls. L, resumed next,
    holds the lock: it must mint itself and not queue behind F, else nobody mints until F's wait
    runs out and replica B's waiter (W), timing out at the same moment, signs a second token.
    """
    cache_a = broker.app.state.token_cache
    store = cache_a.store
    cache_b = TokenCache(broker.settings, store=store, metrics=Metrics(), log=cache_a._log)  # another replica
    signer = broker.app.state.signer()
    grant = _grant()
    version = broker.call(broker.app.state.registry.get, "c1").version
    cid = cache_a.cache_id(grant, version, signer)
    now = broker.clock.now

    async def run() -> list[tuple[CacheEntry, str]]:
        lookups = {}
        for rid in ("L", "F", "W"):  # L's script runs first in Redis and takes the lock
            lookups[rid] = await store.consume_and_lookup("c1", "jti-" + rid, rid, 60_000, cid, LOCK_MS)
        assert [(lk.entry, lk.locked) for lk in lookups.values()] == [(None, True), (None, False), (None, False)]
        f = asyncio.ensure_future(cache_a.issue(grant, signer, cid, lookups["F"], now, "F"))
        await asyncio.sleep(0)  # F is A's in-process leader now, polling the lock L holds
        answers = await asyncio.gather(f, cache_a.issue(grant, signer, cid, lookups["L"], now, "L"),
                                       cache_b.issue(grant, signer, cid, lookups["W"], now, "W"))
        return answers

    answers = broker.call(run)
    assert len({entry.access_token for entry, _ in answers}) == 1
    assert [how for _, how in answers].count("mint") == 1  # issue() called directly: no token.issued line
    assert not any(e.get("event") == "token_cache.stampede_timeout" for e in broker.logs())


def test_lock_held_but_nothing_appears_mints_after_the_bounded_wait(broker, c1):
    lock, _ = _lock_key(broker)
    broker.call(_redis(broker).psetex, lock, 2000, b"dead-replica")
    t = tok(broker, c1)["access_token"]
    assert len(minted(broker)) == 1
    assert any(e.get("event") == "token_cache.stampede_timeout" for e in broker.logs())
    assert tok(broker, c1)["access_token"] == t


# -- renewal: a client renewing at 80-90 % of expires_in never loops --------------------------------


@pytest.mark.parametrize("fractions", [(0.8,), (0.85,), (0.9,), (0.8, 0.9), (0.8, 0.85, 0.9, 0.9)],
                         ids=["80", "85", "90", "two-replicas", "four-replicas"])
def test_renewal_at_80_to_90_percent_never_loops(broker, c1, fractions):
    """Each replica of the client renews at ``fraction * expires_in`` after each answer.

    Served tokens always have at least half their life left, so a renewal comes at least
    0.8 * 150 s after the previous one: over ten token lifetimes each replica asks at most
    3000 / 120 + 1 times, and never twice within the same second.
    """
    horizon = broker.clock.now + 10 * LIFETIME
    queue = [(broker.clock.now + i * 37.0, i) for i in range(len(fractions))]  # staggered start
    heapq.heapify(queue)
    asks: dict[int, list[float]] = {i: [] for i in range(len(fractions))}
    while queue:
        at, who = heapq.heappop(queue)
        if at > horizon:
            break
        broker.clock.now = at
        body = tok(broker, c1)
        assert body["expires_in"] >= LIFETIME / 2
        asks[who].append(at)
        heapq.heappush(queue, (at + fractions[who] * body["expires_in"], who))
    for who, times in asks.items():
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert min(gaps) >= 0.8 * LIFETIME / 2, (who, gaps)
        assert len(times) <= 10 * LIFETIME / (0.8 * LIFETIME / 2) + 1
    assert len(minted(broker)) <= 10 * LIFETIME / (0.8 * LIFETIME / 2) + len(fractions)


@pytest.mark.parametrize(
    ("env", "ok"),
    [({"BROKER_CACHE_MIN_REMAINING_SHARE": "0.75"}, True), ({"BROKER_CACHE_MIN_REMAINING_SHARE": "0"}, False),
     ({"BROKER_CACHE_MIN_REMAINING_SHARE": "1.5"}, False), ({"BROKER_CACHE_STAMPEDE_WAIT": "0.5"}, True),
     ({"BROKER_CACHE_STAMPEDE_WAIT": "5"}, False), ({"BROKER_CACHE_STAMPEDE_WAIT": "-1"}, False)],
    ids=["share-ok", "share-zero", "share-over-one", "wait-ok", "wait-too-long", "wait-negative"],
)
def test_cache_settings_are_validated(env, ok):
    from app.config import ConfigError

    if ok:
        Settings.from_env(env)
    else:
        with pytest.raises(ConfigError, match=next(iter(env))):
            Settings.from_env(env)
