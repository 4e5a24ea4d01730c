"""Several workers per host, and a replica stopped under load (graceful shutdown).

A stopped replica finishes the requests it accepted (uvicorn's graceful shutdown, bounded by
``--graceful-timeout``) and then refuses connections, which a load balancer routes elsewhere
(nginx retries a refused connect). The replicas that keep running fail nothing.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.__main__ import _workers, main
from app.config import Settings
from scripts.processes import worker_pids
from tests.conftest import Broker, FrozenClock, RedisServer, wait_until
from tests.helpers import ISS, TestClient, form
from tests.redis_topology import redis_cluster, shared_redis  # noqa: F401 (fixtures)
from tests.test_replay import _admin_register


@pytest.mark.parametrize(
    ("text", "expected"),
    [("auto", len(os.sched_getaffinity(0))), ("0", len(os.sched_getaffinity(0))), ("3", 3), ("1", 1)],
    ids=["auto", "zero-means-auto", "explicit", "one"],
)
def test_workers_option(text: str, expected: int) -> None:
    assert _workers(text) == expected


@pytest.mark.parametrize("text", ["-1", "many", ""], ids=["negative", "word", "empty"])
def test_workers_option_rejects(text: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["serve", "--workers", text])
    assert exc.value.code == 2
    assert "--workers" in capsys.readouterr().err


def _register(real_redis: RedisServer, keys_dir: Path, client: TestClient) -> None:
    with Broker(Settings(issuer=ISS, keys_dir=keys_dir, redis_url=real_redis.url), FrozenClock(time.time())) as admin:
        admin.register(client)  # new to every replica: each reads it from the registry on first use


@pytest.mark.redis
@pytest.mark.live
def test_two_workers_serve(real_redis: RedisServer, spawn_broker: Any) -> None:
    broker = spawn_broker(redis_url=real_redis.url, workers=2)
    client = TestClient("c1")
    _register(real_redis, spawn_broker.keys_dir, client)
    workers = worker_pids(broker.proc.pid)
    assert len(workers) == 2, workers
    # Fresh connections are spread by the kernel over both workers' accept calls.
    statuses = Counter()
    for _ in range(30):
        with httpx.Client(timeout=5) as http:
            statuses[http.post(broker.url + "/token", data=form(client.assertion())).status_code] += 1
    assert statuses == {200: 30}
    started = [e for e in broker.logs() if e.get("event") == "broker.started"]
    assert len(started) == 2  # one composition root per worker process


@pytest.mark.redis
@pytest.mark.live
def test_stopping_one_replica_under_load_fails_no_request(
    shared_redis: tuple[str, dict[str, str]], spawn_broker: Any
) -> None:
    """Three replicas under load; one gets SIGTERM. Clients act as the load balancer does
    (deploy/haproxy.cfg): a health check of /readyz every 0.2 s, requests only to replicas that
    passed it. The stopped replica drains (503 on /readyz, requests still served), finishes what
    it has, and exits: not one request fails, on it or on the others."""
    redis_url, env = shared_redis
    brokers = [spawn_broker(redis_url=redis_url, env={**env, "BROKER_SHUTDOWN_DRAIN": "1.5"}) for _ in range(3)]
    client = TestClient("c1")
    _admin_register(brokers[0].url, spawn_broker.keys_dir, client)  # new to every replica: each reads it from the registry on first use
    stop = threading.Event()
    healthy = [True, True, True]
    results: dict[int, Counter[str]] = {i: Counter() for i in range(3)}
    readyz_seen: Counter[str] = Counter()

    def health_check() -> None:
        with httpx.Client(timeout=1) as http:
            while not stop.is_set():
                for idx, b in enumerate(brokers):
                    try:
                        resp = http.get(b.management_url + "/readyz")
                        healthy[idx] = resp.status_code == 200
                        if idx == 0:
                            readyz_seen[resp.json()["status"]] += 1
                    except httpx.HTTPError:
                        healthy[idx] = False
                time.sleep(0.2)

    def load(idx: int) -> None:
        deadline = time.monotonic() + 30
        with httpx.Client(timeout=10) as http:
            for _ in range(3000):
                if stop.is_set() or time.monotonic() > deadline:
                    return
                if not healthy[idx]:
                    time.sleep(0.05)
                    continue
                try:
                    resp = http.post(brokers[idx].url + "/token", data=form(client.assertion()))
                    results[idx][str(resp.status_code)] += 1
                except httpx.HTTPError as exc:
                    results[idx][type(exc).__name__] += 1

    threads = [threading.Thread(target=health_check)] + [
        threading.Thread(target=load, args=(i,)) for i in range(3) for _ in range(2)
    ]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: all(r["200"] > 20 for r in results.values()), 20, what="every replica serving the load")
        stopped_at = time.monotonic()
        brokers[0].stop()  # SIGTERM, then waits for the process to exit
        # uvicorn finishes its graceful shutdown, then re-raises the captured SIGTERM.
        assert brokers[0].proc.returncode in (0, -15)
        assert time.monotonic() - stopped_at >= 1.5  # it drained first
        served = {i: results[i]["200"] for i in (1, 2)}
        wait_until(lambda: all(results[i]["200"] >= served[i] + 10 for i in (1, 2)), 20,
                   what="the other replicas serving on after the stop")
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    assert {i: set(r) for i, r in results.items()} == {0: {"200"}, 1: {"200"}, 2: {"200"}}, results
    assert min(r["200"] for r in results.values()) > 20, results
    assert readyz_seen["draining"] >= 1 and readyz_seen["ready"] >= 1, readyz_seen
    events = [e.get("event") for e in brokers[0].logs()]
    assert "broker.stopping" in events and "broker.stopped" in events
    assert "request.unexpected_error" not in events
