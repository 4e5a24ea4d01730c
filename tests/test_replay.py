"""Replay protection (docs/attack-matrix.md, "Replay"), in-process and across broker processes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from app.config import Settings
from app.store import keyspace
from app.store.redis import RedisReplayGuard
from tests.conftest import Broker
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import ISS, TestClient, form, jti_of


def test_same_assertion_twice_then_new_assertion_with_same_jti(broker, c1):
    assertion = c1.assertion(broker.clock.now)
    assert_token(broker.token(form(assertion)))
    assert_invalid_client(broker.token(form(assertion)))
    fresh = c1.assertion(broker.clock.now + 1, jti=jti_of(assertion))
    assert fresh != assertion
    assert_invalid_client(broker.token(form(fresh)))
    reasons = [e["reason"] for e in broker.logs() if e["event"] == "token.rejected"]
    assert reasons == ["jti_replayed", "jti_replayed"]


@pytest.mark.parametrize(
    "a,b",
    [(("ab", "c-1"), ("a", "bc-1")), (("c1", "same"), ("c2", "same"))],
    ids=["no-delimiter-collision", "same-jti-two-clients"],
)
def test_jti_is_namespaced_by_client(broker, a, b):
    for client_id, jti in (a, b):
        client = TestClient(client_id)
        broker.register(client)
        assert_token(broker.token(form(client.assertion(broker.clock.now, jti=jti))))
    assert keyspace.replay(*a) != keyspace.replay(*b)


def test_replay_ttl_covers_exp_plus_leeway(broker, c1):
    """`replay-ttl-and-clock-edges` (a): exp = now-5 with L = 10 is accepted once; its replay is refused."""
    now = broker.clock.now
    assertion = c1.assertion(now, exp=int(now) - 5, iat=int(now) - 60)
    assert_token(broker.token(form(assertion)))
    broker.clock.advance(4)
    assert_invalid_client(broker.token(form(assertion)))


def test_replay_record_ttl_is_bounded(broker, c1):
    now = broker.clock.now
    assertion = c1.assertion(now, exp=int(now) + 300)
    assert_token(broker.token(form(assertion)))
    jti = jti_of(assertion)
    redis = broker.app.state.registry.redis
    ttl_ms = broker.call(redis.pttl, keyspace.replay("c1", jti))
    s = broker.settings
    assert (300 + s.leeway + s.clock_skew - 1) * 1000 < ttl_ms <= (300 + s.leeway + s.clock_skew) * 1000


def test_same_request_id_retry_is_first_use(broker):
    """`replay-reply-lost`: a retried SET whose first reply was lost finds its own request id: first use."""
    guard = RedisReplayGuard(broker.app.state.registry.redis, timeout=0.3, retries=1)
    assert broker.call(guard.first_use, "c1", "j", "req-1", 10_000) is True
    assert broker.call(guard.first_use, "c1", "j", "req-1", 10_000) is True
    assert broker.call(guard.first_use, "c1", "j", "req-2", 10_000) is False


# -- real Redis ------------------------------------------------------------------------------


@pytest.mark.redis
def test_replay_on_real_redis_in_process(real_redis, tmp_path, clock):
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_url=real_redis.url)
    with Broker(settings, clock) as b:
        client = TestClient("c1")
        b.register(client)
        assertion = client.assertion(clock.now)
        assert_token(b.token(form(assertion)))
        assert_invalid_client(b.token(form(assertion)))


def _admin_register(base_url: str, keys_dir, client: TestClient) -> None:
    from app.keystore import import_private_jwk, read_json
    from token_broker_jose.assertion import make_client_assertion

    data = read_json(keys_dir / "admin.jwk")
    admin_key = import_private_jwk(data)
    assertion = make_client_assertion(admin_key, client_id="broker-admin", issuer=ISS, alg="ES256", kid=data["kid"])
    r = httpx.post(base_url + "/token", data={**form(assertion), "scope": "broker:admin", "resource": ISS + "/admin"})
    assert r.status_code == 200, r.text
    r = httpx.post(base_url + "/admin/clients", json=client.metadata(),
                   headers={"authorization": "Bearer " + r.json()["access_token"]})
    assert r.status_code == 201, r.text


@pytest.mark.redis
@pytest.mark.live
def test_replay_across_two_processes(real_redis, spawn_broker):
    r1 = spawn_broker(redis_url=real_redis.url)
    r2 = spawn_broker(redis_url=real_redis.url)
    client = TestClient("c1")
    _admin_register(r1.url, spawn_broker.keys_dir, client)  # new to every replica: each reads it from the registry on first use
    for first, second in ((r1, r2), (r2, r1)):
        assertion = client.assertion()
        ok = httpx.post(first.url + "/token", data=form(assertion))
        assert ok.status_code == 200, ok.text
        again = httpx.post(second.url + "/token", data=form(assertion))
        assert (again.status_code, again.json()["error"]) == (401, "invalid_client")


@pytest.mark.redis
@pytest.mark.live
def test_concurrent_identical_requests_across_processes(real_redis, spawn_broker):
    """`replay-race`: 50 concurrent identical requests over R1 and R2, 20 rounds: exactly one 200 per round.

    The failed-authentication rate limit is set to observe-only here: 980 replays from one client
    would otherwise (rightly) turn into 429s, which is not what this row tests.
    """
    env = {"BROKER_RATELIMIT_MODE": "observe"}
    r1 = spawn_broker(redis_url=real_redis.url, env=env)
    r2 = spawn_broker(redis_url=real_redis.url, env=env)
    client = TestClient("c1")
    _admin_register(r1.url, spawn_broker.keys_dir, client)  # new to every replica: each reads it from the registry on first use

    async def round_(http: httpx.AsyncClient) -> list[int]:
        body = form(client.assertion())
        tasks = [http.post((r1 if i % 2 else r2).url + "/token", data=body) for i in range(50)]
        return [r.status_code for r in await asyncio.gather(*tasks)]

    async def main() -> list[list[int]]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=10) as http:
            return [await round_(http) for _ in range(20)]

    for statuses in asyncio.run(main()):
        assert sorted(statuses) == [200] + [401] * 49
