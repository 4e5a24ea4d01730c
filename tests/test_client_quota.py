"""Per-client request quota and the Redis memory gauges (docs/security.md, "Hardening round 2";
attack matrix: `client-request-flood`).

Every accepted jti record counts toward its client's quota (``BROKER_CLIENT_QUOTA`` requests per
``BROKER_CLIENT_QUOTA_WINDOW`` seconds), in the same Lua script call that records it; a request
over the quota gets 429 ``slow_down`` with ``Retry-After`` and writes no replay record.
"""

from __future__ import annotations

import asyncio
import io
import json
import time
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fakeredis.aioredis import FakeRedis

from app.config import ConfigError, Settings
from app.log import configure, get_logger
from app.metrics import Metrics
from app.oauth.errors import SlowDown
from app.service.redis_memory import RedisMemoryMonitor
from app.store.memory import RedisMemoryProbe
from scripts.processes import wait_until
from tests.conftest import Broker, FrozenClock, RedisServer
from tests.expect import assert_error, assert_invalid_client, assert_token, error_body
from tests.helpers import ISS, URN, TestClient, form
from tests.redis_topology import Cluster, redis_cluster  # noqa: F401 (fixture)

T = TypeVar("T")
QUOTA_BODY = error_body("slow_down", SlowDown)


def quota_settings(tmp_path: Path, **env: str) -> Settings:
    """Settings as the broker reads them at start (``BROKER_*`` variables)."""
    return Settings.from_env({"BROKER_ISSUER": ISS, "BROKER_KEYS_DIR": str(tmp_path / "keys"),
                              "BROKER_TOKEN_LIFETIME": "300", **env})


def _redis(b: Broker) -> Any:
    return b.app.state.registry.redis


def _keys(b: Broker, pattern: str) -> list[bytes]:
    return b.call(_redis(b).keys, pattern)


def _rejections(b: Broker, event: str = "token.rejected") -> list[str]:
    return [e["reason"] for e in b.logs() if e["event"] == event]


def _assert_over_quota(r: httpx.Response, window: int) -> None:
    assert_error(r, 429, "slow_down", SlowDown)
    assert r.json() == QUOTA_BODY
    assert 1 <= int(r.headers["retry-after"]) <= window


@pytest.fixture
def client() -> TestClient:
    return TestClient("c1")


# -- the rule table, in process on fakeredis ------------------------------------------------------


@pytest.mark.parametrize(
    ("quota", "requests", "expected"),
    [
        ("3", 2, [200, 200]),
        ("3", 3, [200, 200, 200]),
        ("3", 5, [200, 200, 200, 429, 429]),
        ("", 40, [200] * 40),
    ],
    ids=["under-quota", "at-quota", "over-quota", "quota-off"],
)
def test_quota_rule_table(tmp_path, clock, client, quota, requests, expected) -> None:
    with Broker(quota_settings(tmp_path, BROKER_CLIENT_QUOTA=quota), clock) as b:
        b.register(client)
        responses = [b.get_token(client) for _ in range(requests)]
        assert [r.status_code for r in responses] == expected
        for r in responses:
            if r.status_code == 429:
                _assert_over_quota(r, 60)
            else:
                assert_token(r)
        refused = expected.count(429)
        assert _rejections(b) == ["quota_exceeded"] * refused
        metrics = b.app.state.metrics
        assert metrics.value("broker_token_rejections_total", error="slow_down", reason="quota_exceeded") == refused
        # Only the requests within the quota left a replay record.
        assert len(_keys(b, "*:replay:*")) == requests - refused


def test_over_quota_requests_do_not_grow_the_replay_keyspace(tmp_path, clock, client) -> None:
    with Broker(quota_settings(tmp_path, BROKER_CLIENT_QUOTA="2"), clock) as b:
        b.register(client)
        for _ in range(2):
            assert_token(b.get_token(client))
        before = sorted(_keys(b, "*"))
        for _ in range(25):
            _assert_over_quota(b.get_token(client), 60)
        assert sorted(_keys(b, "*")) == before
        quota_keys = _keys(b, "*:quota")
        assert len(quota_keys) == 1 and b.call(_redis(b).get, quota_keys[0]) == b"2"


def test_window_reset_and_the_refused_assertion_is_not_spent(tmp_path, clock, client) -> None:
    with Broker(quota_settings(tmp_path, BROKER_CLIENT_QUOTA="1", BROKER_CLIENT_QUOTA_WINDOW="1"), clock) as b:
        b.register(client)
        assert_token(b.get_token(client))
        refused = client.assertion(clock.now)
        r = b.token(form(refused))
        _assert_over_quota(r, 1)
        assert r.headers["retry-after"] == "1"
        # Once the window has passed, the very assertion that was refused is accepted (its jti was
        # never recorded), and then it is spent like any other. (Within a full window its replay is
        # a 429 too: the quota is checked first, and the replay is never served either way.)
        served = wait_until(lambda: (resp := b.token(form(refused))).status_code == 200 and resp,
                            5, what="the quota window to end")
        assert_token(served)
        replay = wait_until(lambda: (resp := b.token(form(refused))).status_code != 429 and resp,
                            5, what="the next quota window")
        assert_invalid_client(replay)
        assert _rejections(b)[-1] == "jti_replayed"
        assert set(_rejections(b)[:-1]) == {"quota_exceeded"}


def test_refused_grants_count_and_cannot_get_past_the_quota(tmp_path, clock, client) -> None:
    """A grant refused after authentication records its jti with the plain replay record when the
    quota is off; with the quota on that record is counted too, and over the quota it is a 429."""
    with Broker(quota_settings(tmp_path, BROKER_CLIENT_QUOTA="2"), clock) as b:
        b.register(client)
        for _ in range(2):
            assert_error(b.get_token(client, scope="admin"), 400, "invalid_scope")
        _assert_over_quota(b.get_token(client, scope="admin"), 60)
        _assert_over_quota(b.get_token(client), 60)
        assert len(_keys(b, "*:replay:*")) == 2


def test_replays_do_not_spend_the_quota(tmp_path, clock, client) -> None:
    with Broker(quota_settings(tmp_path, BROKER_CLIENT_QUOTA="2"), clock) as b:
        b.register(client)
        assertion = client.assertion(clock.now)
        assert_token(b.token(form(assertion)))
        for _ in range(3):
            assert_invalid_client(b.token(form(assertion)))
        assert_token(b.get_token(client))
        _assert_over_quota(b.get_token(client), 60)


def _post(b: Broker, path: str, client: TestClient, **params: str) -> httpx.Response:
    data = {"client_assertion_type": URN, "client_assertion": client.assertion(b.clock.now), **params}
    return b.http.post(path, content=str(httpx.QueryParams(data)),
                       headers={"content-type": "application/x-www-form-urlencoded"})


def test_revocation_and_introspection_count_toward_the_same_quota(tmp_path, clock, client) -> None:
    """Each records the caller's jti as /token does, so each is one request of the quota."""
    rs = TestClient("rs-1", scopes=("broker:introspect",), default_scopes=("broker:introspect",))
    with Broker(quota_settings(tmp_path, BROKER_CLIENT_QUOTA="3"), clock) as b:
        b.register(client)
        b.register(rs)
        token = assert_token(b.get_token(client))["access_token"]
        assert _post(b, "/revoke", client, token=token).status_code == 200
        assert _post(b, "/revoke", client, token=token).status_code == 200
        _assert_over_quota(_post(b, "/revoke", client, token=token), 60)
        _assert_over_quota(b.get_token(client), 60)
        # Another client's quota is its own.
        for _ in range(3):
            assert _post(b, "/introspect", rs, token=token).status_code == 200
        _assert_over_quota(_post(b, "/introspect", rs, token=token), 60)
        assert _rejections(b, "revocation.rejected") == ["quota_exceeded"]
        assert _rejections(b, "introspection.rejected") == ["quota_exceeded"]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_CLIENT_QUOTA": "-1"}, "BROKER_CLIENT_QUOTA must be between 0"),
        ({"BROKER_CLIENT_QUOTA": "100000001"}, "BROKER_CLIENT_QUOTA must be between 0"),
        ({"BROKER_CLIENT_QUOTA": "ten"}, "BROKER_CLIENT_QUOTA='ten' is not a valid int"),
        ({"BROKER_CLIENT_QUOTA_WINDOW": "0"}, "BROKER_CLIENT_QUOTA_WINDOW must be between 1 and 86400"),
        ({"BROKER_CLIENT_QUOTA_WINDOW": "86401"}, "BROKER_CLIENT_QUOTA_WINDOW must be between 1 and 86400"),
    ],
    ids=["negative", "too-large", "not-a-number", "window-zero", "window-over-a-day"],
)
def test_quota_settings_are_validated(tmp_path, env, message) -> None:
    with pytest.raises(ConfigError, match=message):
        quota_settings(tmp_path, **env)


def test_quota_settings_are_read(tmp_path) -> None:
    assert quota_settings(tmp_path).client_quota == 0  # off by default
    s = quota_settings(tmp_path, BROKER_CLIENT_QUOTA="500", BROKER_CLIENT_QUOTA_WINDOW="10")
    assert (s.client_quota, s.client_quota_window) == (500, 10)


# -- real Redis -----------------------------------------------------------------------------------


def _commandstats(server: RedisServer) -> dict[str, int]:
    import redis

    r = redis.Redis(host="127.0.0.1", port=server.port, socket_timeout=2)
    try:
        stats = r.info("commandstats")
    finally:
        r.close()
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}


@pytest.mark.redis
def test_quota_is_shared_by_two_instances_and_counted_in_the_one_script_call(real_redis, tmp_path, clock) -> None:
    settings = quota_settings(tmp_path, BROKER_REDIS_URL=real_redis.url, BROKER_CLIENT_QUOTA="7")
    client = TestClient("c1")
    with Broker(settings, clock) as one, Broker(settings, clock) as two:
        one.register(client)
        assert_token(one.get_token(client))  # a miss: the lookup script stores the token signed ahead
        assert_token(two.get_token(client))  # a hit (``two`` signed ahead: it had served no token)
        assert_token(one.get_token(client))  # a hit with nothing signed ahead: that script loaded too
        real_redis.command("CONFIG", "RESETSTAT")
        statuses = [(one if i % 2 else two).get_token(client).status_code for i in range(6)]
        stats = _commandstats(real_redis)
    assert statuses == [200, 200, 200, 200, 429, 429]
    # One script call per token request (hits and refusals alike), nothing else per request: the
    # quota INCR runs inside it, for the four counted requests only; refused ones wrote nothing.
    assert stats.get("evalsha") == 6
    assert stats.get("incr") == 4
    assert stats.get("set") == 4
    assert not {"eval", "multi", "exec", "incrby", "script|load"} & set(stats)
    names = [n for n in real_redis.command("KEYS", "*:quota")]
    assert len(names) == 1 and real_redis.command("GET", names[0]) == b"7"
    assert len(real_redis.command("KEYS", "*:replay:*")) == 7


def _gauges(b: Broker) -> dict[str, float]:
    out = {}
    for line in b.management.get("/metrics").text.splitlines():
        if line.startswith("broker_redis_memory") or line.startswith("broker_redis_maxmemory"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


@pytest.mark.redis
def test_memory_gauges_are_refreshed_from_info_memory(real_redis, tmp_path, clock) -> None:
    settings = quota_settings(tmp_path, BROKER_REDIS_URL=real_redis.url)
    real_redis.command("CONFIG", "SET", "maxmemory", str(256 * 2**20))
    try:
        with Broker(settings, clock) as b:
            first = wait_until(lambda: (g := _gauges(b)).get("broker_redis_memory_max_bytes") == 256 * 2**20 and g,
                               10, what="the first memory refresh")
            assert first["broker_redis_memory_used_bytes"] > 0
            assert first['broker_redis_maxmemory_policy_info{policy="noeviction"}'] == 1
            real_redis.command("CONFIG", "SET", "maxmemory", str(300 * 2**20))
            wait_until(lambda: _gauges(b).get("broker_redis_memory_max_bytes") == 300 * 2**20, 15,
                       what="a later refresh to see the new maxmemory")
            assert_token(_issue(b))  # the monitor never stands in the way of a request
    finally:
        real_redis.command("CONFIG", "SET", "maxmemory", "0")


def _issue(b: Broker) -> httpx.Response:
    client = TestClient("c1")
    b.register(client)
    return b.get_token(client)


@pytest.mark.redis
def test_info_refused_by_acl_leaves_the_gauges_absent_and_tokens_flowing(real_redis, tmp_path, clock) -> None:
    from redis.asyncio import Redis

    real_redis.command("ACL", "SETUSER", "noinfo", "reset", "on", ">pw", "~*", "+@all", "-info")
    try:
        client = Redis.from_url(f"redis://noinfo:pw@127.0.0.1:{real_redis.port}/0", socket_timeout=1)
        settings = quota_settings(tmp_path, BROKER_REDIS_URL=real_redis.url)
        with Broker(settings, clock, redis=client) as b:
            wait_until(lambda: any(e["event"] == "redis_memory.unavailable" for e in b.logs()), 10,
                       what="the refused INFO to be logged")
            assert_token(_issue(b))
            assert _gauges(b) == {}
            b.call(client.aclose)
    finally:
        real_redis.command("ACL", "DELUSER", "noinfo")


# -- the memory monitor without INFO (the embedded fakeredis has none) ------------------------------


def test_monitor_without_info_logs_once_and_reports_nothing() -> None:
    stream = io.StringIO()
    configure("info", stream)
    metrics = Metrics()
    monitor = RedisMemoryMonitor(RedisMemoryProbe(FakeRedis(), cluster=False, timeout=0.3, retries=0),
                                 metrics=metrics, log=get_logger())

    async def twice() -> list[bool]:
        return [await monitor.refresh(), await monitor.refresh()]

    assert asyncio.run(twice()) == [False, False]
    events = [json.loads(line)["event"] for line in stream.getvalue().splitlines()]
    assert events.count("redis_memory.unavailable") == 1
    # The families are declared (HELP/TYPE from the first scrape) but have no sample: a 0 would be a reading.
    samples = [ln for ln in metrics.render().decode().splitlines() if not ln.startswith("#")]
    assert [ln for ln in samples if ln.startswith(("broker_redis_memory", "broker_redis_maxmemory"))] == []


# -- Redis Cluster ----------------------------------------------------------------------------------


def test_the_quota_counter_shares_the_slot_of_the_token_endpoint_script() -> None:
    from redis.crc import key_slot

    from app.store import keyspace

    for client_id in ("c1", "a:b", "{tb:tok:x}"):
        names = [keyspace.replay(client_id, "j"), keyspace.token_entry(client_id, "x"),
                 keyspace.token_lock(client_id, "x"), keyspace.token_quota(client_id)]
        assert len({key_slot(n.encode()) for n in names}) == 1


@pytest.mark.redis
def test_quota_and_memory_gauges_on_a_cluster(redis_cluster: Cluster, tmp_path) -> None:
    redis_cluster.flush()
    settings = quota_settings(tmp_path, BROKER_REDIS_URL=redis_cluster.url, BROKER_REDIS_CLUSTER="true",
                              BROKER_CLIENT_QUOTA="2")
    clock = FrozenClock(time.time())
    with Broker(settings, clock) as b:
        for i in range(8):  # clients on several nodes: each script call stays in its client's slot
            client = TestClient(f"spread-{i}")
            b.register(client)
            assert_token(b.get_token(client))
            assert_error(b.get_token(client, scope="admin"), 400, "invalid_scope")
            _assert_over_quota(b.get_token(client), 60)
        gauges = wait_until(lambda: _gauges(b), 10, what="the memory gauges")
        assert gauges["broker_redis_memory_used_bytes"] > 0
        samples = [ln for ln in b.management.get("/metrics").text.splitlines() if not ln.startswith("#")]
        assert [ln for ln in samples if ln.startswith("broker_redis_errors_total")] == []  # declared, never counted
