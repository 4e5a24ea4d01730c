"""The broker behind Redis Sentinel follows a failover (real master, replica and Sentinel).

What a failover can lose: replication is asynchronous, so jti records written to the old master in
the last moments before it failed may be missing on the promoted replica, and an assertion used
just before the failover could be accepted once more after it. That window is bounded by the
assertion lifetime cap (BROKER_ASSERTION_MAX_LIFETIME, 300 s by default, plus leeway): an
assertion older than that is refused by its ``exp``/``iat`` whatever Redis remembers. The test
below waits until the replica has caught up, then checks that an assertion spent before the
``SENTINEL FAILOVER`` is still refused after it, and that tokens are issued again.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.config import ConfigError, Settings
from tests.conftest import Broker, FrozenClock, _redis_binary
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import ISS, TestClient, form
from tests.redis_topology import SentinelSetup, running
from tests.test_replay import _admin_register


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"BROKER_REDIS_SENTINELS": "127.0.0.1:26379"}, "set together"),
        ({"BROKER_REDIS_SENTINEL_MASTER": "m"}, "set together"),
        ({"BROKER_REDIS_SENTINELS": "127.0.0.1", "BROKER_REDIS_SENTINEL_MASTER": "m"}, "host:port"),
        ({"BROKER_REDIS_SENTINELS": "h:1", "BROKER_REDIS_SENTINEL_MASTER": "m", "BROKER_REDIS_CLUSTER": "1",
          "BROKER_REDIS_URL": "redis://h:2"}, "no BROKER_REDIS_SENTINELS"),
    ],
    ids=["sentinels-without-master", "master-without-sentinels", "no-port", "cluster-and-sentinel"],
)
def test_sentinel_settings_are_checked(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_sentinel_settings_are_not_embedded() -> None:
    settings = Settings.from_env({"BROKER_REDIS_SENTINELS": "127.0.0.1:26379, 127.0.0.1:26380",
                                  "BROKER_REDIS_SENTINEL_MASTER": "tbmaster"})
    assert settings.redis_sentinels == ("127.0.0.1:26379", "127.0.0.1:26380")
    assert not settings.embedded


@pytest.fixture
def sentinel() -> Iterator[SentinelSetup]:
    with running(SentinelSetup(_redis_binary())) as setup:
        yield setup


@pytest.mark.redis
def test_tokens_are_issued_across_a_sentinel_failover(sentinel: SentinelSetup, tmp_path: Path) -> None:
    sentinels = (f"127.0.0.1:{sentinel.sentinel_port}",)
    settings = Settings(issuer=ISS, keys_dir=tmp_path / "keys", redis_sentinels=sentinels,
                        redis_sentinel_master=sentinel.MASTER_NAME)
    clock = FrozenClock(time.time())
    with Broker(settings, clock) as b:  # create_app connects through the Sentinel and closes the client
        c1 = TestClient("c1")
        b.register(c1)
        spent = c1.assertion(clock.now)
        assert_token(b.token(form(spent)))
        old_master = sentinel.master_port
        sentinel.wait_replica_caught_up()

        new_master = sentinel.failover()
        assert new_master == sentinel.replica_port != old_master

        # The first requests after the switch may meet the old connection (now a replica:
        # READONLY) and answer 503; within a few seconds the client follows the new master.
        deadline = time.monotonic() + 15
        statuses = []
        while time.monotonic() < deadline:
            clock.now = time.time()
            resp = b.token(form(c1.assertion(clock.now)))
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                break
            assert resp.status_code == 503, resp.text
            time.sleep(0.2)
        assert statuses[-1] == 200, statuses
        for _ in range(3):
            assert_token(b.token(form(c1.assertion(clock.now))))
        assert_invalid_client(b.token(form(spent)))  # the replicated jti record survived the switch
    events = [e["event"] for e in b.logs()]
    assert "request.unexpected_error" not in events and "token.unexpected_error" not in events


@pytest.mark.redis
@pytest.mark.live
def test_two_processes_through_sentinel(sentinel: SentinelSetup, spawn_broker: Any) -> None:
    env = {"BROKER_REDIS_SENTINELS": f"127.0.0.1:{sentinel.sentinel_port}",
           "BROKER_REDIS_SENTINEL_MASTER": sentinel.MASTER_NAME}
    brokers = [spawn_broker(env=env) for _ in range(2)]
    client = TestClient("c1")
    _admin_register(brokers[0].url, spawn_broker.keys_dir, client)  # new to both: each reads it from the registry on first use
    assertion = client.assertion()
    assert_token(httpx.post(brokers[1].url + "/token", data=form(assertion)))
    assert_invalid_client(httpx.post(brokers[0].url + "/token", data=form(assertion)))  # replay across replicas
    started = [e for b in brokers for e in b.logs() if e.get("event") == "broker.started"]
    assert [e["store"] for e in started] == ["redis", "redis"]
