"""A lost client registry (docs/operations.md, "When the registry is lost"; attack matrix:
`registry-loss`): Redis flushed, or a redis-server restarted without persistence. Every replica
notices within 2 s: /readyz 503 ``registry: lost``, one ``registry.lost`` error per replica,
``broker_registry_lost`` 1, and /token, /revoke, /introspect and the admin API answer 503
``temporarily_unavailable`` (not ``invalid_client``). A broker that starts on the emptied Redis
does not create a new registry; ``python -m app registry recreate`` (or restoring the data with
its marker) brings every replica back without a restart. Real redis-server processes.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app import log as broker_log
from app.config import Settings
from app.metrics import REDIS_SECONDS, REGISTRY_LOST
from app.store import keyspace
from app.store.redis import connect
from app.web.app import create_app
from tests.conftest import ROOT, Broker, FrozenClock, RedisServer, _redis_binary
from tests.expect import assert_error, assert_invalid_client, assert_token
from tests.helpers import ISS, TestClient, form
from tests.test_admin_api import admin_headers
from tests.test_revocation_introspection import INTROSPECTOR, post

pytestmark = pytest.mark.redis

LOST = {"status": "not ready", "redis": "ok", "registry": "lost"}
DETECTION_BOUND = 2.0  # seconds: the promise (the poll runs every 0.25 s)


def wait_until(condition: Callable[[], Any], timeout: float = DETECTION_BOUND, what: str = "condition") -> Any:
    """Poll ``condition`` until it is truthy (returned), failing after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.02)


def settings_for(url: str, keys_dir: Path, **extra: Any) -> Settings:
    return Settings(issuer=ISS, keys_dir=keys_dir, token_lifetime=300, redis_url=url, **extra)


def readyz(broker: Broker) -> tuple[int, dict[str, Any]]:
    r = broker.management.get("/readyz")
    return r.status_code, r.json()


def events(broker: Broker, name: str) -> list[dict[str, Any]]:
    return [e for e in broker.logs() if e["event"] == name]


def cli(*args: str, keys_dir: Path, url: str) -> subprocess.CompletedProcess[str]:
    """``python -m app ...`` as an operator runs it."""
    env = {**os.environ, "BROKER_KEYS_DIR": str(keys_dir), "BROKER_REDIS_URL": url, "BROKER_ISSUER": ISS}
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)


def registry_keys(server: RedisServer) -> list[bytes]:
    return sorted(server.command("KEYS", "{tb:registry}*"))


def polls(broker: Broker) -> int:
    """Registry polls (and other registry calls) this broker has made so far."""
    hist = broker.app.state.metrics._histograms[REDIS_SECONDS].get((("op", "registry"),))
    return 0 if hist is None else hist.count


@pytest.fixture
def lb(real_redis: RedisServer, tmp_path: Path, clock: FrozenClock) -> Iterator[Broker]:
    with Broker(settings_for(real_redis.url, tmp_path / "keys"), clock) as b:
        yield b


def test_flushall_is_detected_answered_503_and_recovered_by_recreate(lb: Broker, real_redis: RedisServer, tmp_path):
    c1 = TestClient("c1")
    lb.register(c1)
    lb.register(INTROSPECTOR)
    token = assert_token(lb.get_token(c1))["access_token"]
    admin = admin_headers(lb)
    assert readyz(lb)[0] == 200

    real_redis.command("FLUSHALL")
    assert wait_until(lambda: readyz(lb) == (503, LOST), what="readyz lost")
    assert_error(lb.get_token(c1), 503, "temporarily_unavailable")
    assert lb.get_token(c1).headers["retry-after"] == "2"
    for path in ("/revoke", "/introspect"):
        r = post(lb, path, INTROSPECTOR, token=token)
        assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "temporarily_unavailable", "2")
    r = lb.http.get("/admin/clients", headers=admin)
    assert (r.status_code, r.json()["error"]) == (503, "temporarily_unavailable")
    assert lb.app.state.metrics.value(REGISTRY_LOST) == 1
    assert "broker_registry_lost 1" in lb.management.get("/metrics").text
    seen = polls(lb)
    wait_until(lambda: polls(lb) >= seen + 4, what="four more polls")
    (lost,) = events(lb, "registry.lost")  # once, however many polls see it
    assert (lost["level"], lost["reason"]) == ("error", "missing")
    assert not [e for e in events(lb, "token.rejected") if e["error"] == "invalid_client"]
    assert {e["error"] for e in events(lb, "token.store_unavailable")} == {"registry_lost"}
    assert registry_keys(real_redis) == []  # nothing re-created the registry or the admin client

    done = cli("registry", "recreate", keys_dir=lb.settings.keys_dir, url=real_redis.url)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[-1])["registry"] == "ok"
    status, body = wait_until(lambda: readyz(lb)[0] == 200 and readyz(lb), what="ready again")
    assert (body["status"], body["registry"]) == ("ready", "ok")
    assert [e["event"] for e in lb.logs() if e["event"].startswith("registry.")].count("registry.restored") == 1
    assert lb.app.state.metrics.value(REGISTRY_LOST) == 0
    # The recreated registry is empty but for the admin client, which the replica put back.
    h = admin_headers(lb)
    assert [c["client_id"] for c in lb.http.get("/admin/clients", headers=h).json()["clients"]] == ["broker-admin"]
    assert_invalid_client(lb.get_token(c1))
    lb.register(c1)
    assert_token(lb.get_token(c1))


def test_first_start_creates_the_registry_a_start_after_a_loss_does_not(real_redis, tmp_path, clock):
    """Told apart by the keys folder: the first start of a deployment records the registry's id
    there; a later start that finds the id recorded but no registry in Redis reports the loss and
    writes nothing. Another deployment (its own keys folder) on the same empty Redis creates its own."""
    keys = tmp_path / "keys"
    with Broker(settings_for(real_redis.url, keys), clock) as first:
        assert readyz(first)[0] == 200
        (created,) = events(first, "registry.created")
    recorded = (keys / "registry.id").read_text().strip()
    assert recorded == created["registry_id"] == real_redis.command("GET", keyspace.REGISTRY_MARKER).decode()

    real_redis.command("FLUSHALL")
    with Broker(settings_for(real_redis.url, keys), clock) as later:
        assert readyz(later) == (503, LOST)
        assert [e["reason"] for e in events(later, "registry.lost")] == ["missing"]
        assert events(later, "registry.created") == []
        assert real_redis.command("DBSIZE") == 0  # no marker, no admin record: the loss stays visible

        with Broker(settings_for(real_redis.url, tmp_path / "other-keys"), clock) as other:
            assert readyz(other)[0] == 200
        # Redis now holds the other deployment's registry: for this one it is still not its own.
        assert readyz(later) == (503, LOST)
    assert (keys / "registry.id").read_text().strip() == recorded


def test_keys_init_creates_the_registry_once_and_never_over_a_loss(real_redis, tmp_path):
    keys = tmp_path / "keys"
    done = cli("keys", "init", keys_dir=keys, url=real_redis.url)
    assert done.returncode == 0, done.stderr
    marker = real_redis.command("GET", keyspace.REGISTRY_MARKER).decode()
    assert (keys / "registry.id").read_text().strip() == marker
    assert cli("registry", "status", keys_dir=keys, url=real_redis.url).returncode == 0

    real_redis.command("FLUSHALL")
    done = cli("keys", "init", keys_dir=keys, url=real_redis.url)
    assert done.returncode == 0, done.stderr  # the keys are fine; the loss is reported
    assert '"event":"registry.lost"' in done.stdout
    assert real_redis.command("DBSIZE") == 0
    status = cli("registry", "status", keys_dir=keys, url=real_redis.url)
    assert status.returncode == 1
    assert json.loads(status.stdout.splitlines()[-1]) == {"registry": "lost", "registry_id": marker, "marker": None,
                                                          "reason": "missing"}


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A redis-server of this test's own (it is restarted empty)."""
    server = RedisServer(_redis_binary())
    server.start()
    yield server
    server.stop()


def test_redis_server_restarted_empty_then_a_broker_restarts(private_redis, tmp_path, clock):
    keys = tmp_path / "keys"
    c1 = TestClient("c1")
    with Broker(settings_for(private_redis.url, keys), clock) as running:
        running.register(c1)
        assert_token(running.get_token(c1))
        private_redis.stop()  # no persistence: it comes back empty
        private_redis.start()
        assert wait_until(lambda: readyz(running) == (503, LOST), what="readyz lost after the restart")
        assert_error(running.get_token(c1), 503, "temporarily_unavailable")
        assert len(events(running, "registry.lost")) == 1

        with Broker(settings_for(private_redis.url, keys), clock) as restarted:  # shares the keys folder
            assert readyz(restarted) == (503, LOST)
            assert_error(restarted.get_token(c1), 503, "temporarily_unavailable")
            assert private_redis.command("DBSIZE") == 0

            done = cli("registry", "recreate", keys_dir=keys, url=private_redis.url)
            assert done.returncode == 0, done.stderr
            for broker in (running, restarted):
                wait_until(lambda b=broker: readyz(b)[0] == 200, what="ready after recreate")
            assert_invalid_client(restarted.get_token(c1))  # the registry is empty: re-register or import
            restarted.register(c1)
            wait_until(lambda: running.get_token(c1).status_code == 200, what="the other replica sees it")


PERSISTENCE = [
    ("no-persistence", None, "redis.no_persistence"),
    ("append-only-file", ("appendonly", "yes"), None),
    ("rdb-snapshots", ("save", "3600 1"), None),
    ("config-not-allowed", "acl", "redis.persistence_unknown"),
]


@pytest.mark.parametrize(("setup", "warning"), [c[1:] for c in PERSISTENCE], ids=[c[0] for c in PERSISTENCE])
def test_start_warns_when_redis_keeps_nothing(real_redis, tmp_path, clock, setup, warning):
    url = real_redis.url
    if setup == "acl":  # as on managed Redis: CONFIG is not available to the broker
        real_redis.command("ACL", "SETUSER", "tb-noconfig", "on", ">pw", "~*", "&*", "+@all", "-config")
        url = f"redis://tb-noconfig:pw@127.0.0.1:{real_redis.port}/0"
    elif setup is not None:
        real_redis.command("CONFIG", "SET", *setup)
    try:
        with Broker(settings_for(url, tmp_path / "keys"), clock) as b:
            assert readyz(b)[0] == 200
            found = {e["event"] for e in b.logs()} & {"redis.no_persistence", "redis.persistence_unknown"}
            assert found == ({warning} if warning else set())
            assert all(e["level"] == "warning" for e in b.logs() if e["event"] in found)
    finally:
        if setup == "acl":
            real_redis.command("ACL", "DELUSER", "tb-noconfig")
        elif setup is not None:
            real_redis.command("CONFIG", "SET", setup[0], "no" if setup[0] == "appendonly" else "")


@pytest.mark.parametrize("store", ["embedded", "redis", "redis-client-passed-in"])
def test_stop_ends_every_background_task(store, real_redis, tmp_path, clock):
    """The lifespan's stop cancels the pollers (registry, keys folder, clients file, Redis memory)
    and waits until they have ended, before it closes the Redis client (or, with a client passed
    in, returns): none is left for the event loop's own shutdown."""
    clients_file = tmp_path / "clients.json"
    clients_file.write_text('{"clients": []}')
    extra = {"clients_file": clients_file}
    settings = (Settings(issuer=ISS, keys_dir=tmp_path / "keys", **extra) if store == "embedded"
                else settings_for(real_redis.url, tmp_path / "keys", **extra))

    async def run() -> tuple[set[str], list[str]]:
        client = connect(settings.redis_url, timeout=1.0, retries=0) if store == "redis-client-passed-in" else None
        app = create_app(settings, redis=client, clock=clock, log_stream=io.StringIO())
        async with app.lifespan():
            started = asyncio.all_tasks() - {asyncio.current_task()}
        # (The auto-pipeline's reader belongs to the client: it ends when the client closes.)
        left = [t.get_coro().__qualname__ for t in started if not t.done() and t.get_coro().__qualname__ != "_Link._read"]
        if client is not None:
            await client.aclose()
        return {t.get_coro().__qualname__ for t in started}, left

    names, left = asyncio.run(run())
    pollers = {"ClientDirectory.run", "SigningKeyReloader.run", "ClientsFile.run"}
    assert pollers | ({"RedisMemoryMonitor.run"} if store != "embedded" else set()) <= names
    assert left == []


@pytest.mark.parametrize("absorbed", [0, 1, 3], ids=["ends-at-once", "absorbs-one-cancel", "absorbs-three"])
def test_stop_cancels_again_a_task_that_absorbed_a_cancellation(absorbed):
    """``_stop_tasks`` cancels a task that is still running again, until it ends: the event loop's
    own shutdown cancels each task once and then waits for ever."""
    from app.web.app import _stop_tasks

    async def run() -> tuple[bool, int, list[str]]:
        seen = 0

        async def poller() -> None:
            nonlocal seen
            while True:
                try:
                    await asyncio.sleep(3600)
                except asyncio.CancelledError:
                    seen += 1
                    if seen > absorbed:
                        raise

        task = asyncio.create_task(poller())
        await asyncio.sleep(0)
        log = io.StringIO()
        broker_log.configure("info", log)
        await _stop_tasks([task], broker_log.get_logger())
        broker_log.flush_or_raise()
        return task.cancelled(), seen, [json.loads(line)["event"] for line in log.getvalue().splitlines()]

    assert asyncio.run(run()) == (True, absorbed + 1, [])


def test_embedded_store_says_state_is_in_process(tmp_path, clock):
    with Broker(Settings(issuer=ISS, keys_dir=tmp_path / "keys"), clock) as b:
        names = {e["event"] for e in b.logs()}
        assert "broker.embedded_store" in names
        assert not names & {"redis.no_persistence", "redis.persistence_unknown"}
        assert not (tmp_path / "keys" / "registry.id").exists()  # nothing outlives the process
        assert readyz(b)[1]["registry"] == "ok"


@pytest.mark.live
def test_live_broker_flushall(real_redis, spawn_broker, tmp_path):
    """The same on a real ``python -m app serve`` process, through HTTP only."""
    live = spawn_broker(redis_url=real_redis.url)
    real_redis.command("FLUSHALL")
    wait_until(lambda: httpx.get(live.management_url + "/readyz", timeout=2).json() == LOST, what="live readyz lost")
    r = httpx.post(live.url + "/token", data=form(TestClient("c1").assertion()), timeout=5)
    assert (r.status_code, r.json()["error"], r.headers["retry-after"]) == (503, "temporarily_unavailable", "2")
    done = cli("registry", "recreate", keys_dir=spawn_broker.keys_dir, url=real_redis.url)
    assert done.returncode == 0, done.stderr
    wait_until(lambda: httpx.get(live.management_url + "/readyz", timeout=2).status_code == 200, what="live ready again")
    logged = [e["event"] for e in live.logs() if e.get("event", "").startswith("registry.")]
    assert logged.count("registry.lost") == 1 and logged.count("registry.restored") == 1
