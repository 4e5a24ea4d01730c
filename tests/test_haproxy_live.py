"""deploy/haproxy.cfg in front of three real broker processes: a replica stopped under load
fails no request (it drains: /readyz 503, HAProxy's check takes it out, then it stops).

Runs the repository's HAProxy config with only the addresses changed to loopback. Needs the
``haproxy`` binary (Debian package ``haproxy``): skipped locally without it, a failure in CI.
"""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, RedisServer, free_port, require_binary, wait_until
from tests.helpers import TestClient, form
from tests.test_replay import _admin_register

pytestmark = [pytest.mark.redis, pytest.mark.live]


def _haproxy() -> str:
    return require_binary("haproxy", "the load-balancer tests", "apt-get install haproxy")


def loopback_config(port: int, broker_ports: list[int]) -> str:
    """deploy/haproxy.cfg with loopback addresses instead of compose service names."""
    conf = (ROOT / "deploy/haproxy.cfg").read_text()
    conf = re.sub(r"(?ms)^resolvers docker\n.*?\n\n", "", conf)
    conf = conf.replace(" resolvers docker init-addr last,libc,none", "")
    conf = conf.replace("bind :8080", f"bind 127.0.0.1:{port}")
    for i in (1, 2, 3):
        line = f"    server broker-{i} broker-{i}:8000\n"
        assert line in conf
        conf = conf.replace(line, f"    server broker-{i} 127.0.0.1:{broker_ports[i - 1]}\n" if i <= len(broker_ports) else "")
    assert ":8000" not in conf and "resolvers" not in conf
    return conf


@contextmanager
def haproxy_in_front(tmp_path: Path, broker_ports: list[int]) -> Iterator[str]:
    """The repository's HAProxy config running on loopback; yields its URL once every server is up."""
    binary = _haproxy()
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(loopback_config(port, broker_ports))
    assert subprocess.run([binary, "-c", "-q", "-f", str(cfg)], timeout=30).returncode == 0
    lb = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:  # every server up (rise 2 = two checks)
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        time.sleep(2.5)
        yield url
    finally:
        lb.terminate()
        lb.wait(10)


def test_stopping_a_replica_behind_haproxy_fails_no_request(real_redis: RedisServer, spawn_broker: Any, tmp_path: Path) -> None:
    brokers = [spawn_broker(redis_url=real_redis.url, env={"BROKER_SHUTDOWN_DRAIN": "2.5"}) for _ in range(3)]
    client = TestClient("c1")
    _admin_register(brokers[0].url, spawn_broker.keys_dir, client)
    with haproxy_in_front(tmp_path, [b.port for b in brokers]) as url:
        assert httpx.get(url + "/metrics").status_code == 404  # internal only

        stop = threading.Event()
        results: Counter[str] = Counter()

        def load() -> None:
            end = time.monotonic() + 30
            with httpx.Client(timeout=10) as http:
                for _ in range(3000):
                    if stop.is_set() or time.monotonic() > end:
                        return
                    try:
                        resp = http.post(url + "/token", data=form(client.assertion()))
                        results[str(resp.status_code)] += 1
                    except httpx.HTTPError as exc:
                        results[type(exc).__name__] += 1

        threads = [threading.Thread(target=load) for _ in range(4)]
        for t in threads:
            t.start()
        try:
            def issued_by_first() -> int:
                return sum(1 for e in brokers[0].logs() if e.get("event") == "token.issued")

            wait_until(lambda: results["200"] > 50 and issued_by_first() > 0, 20, what="load through every replica")
            served_before = issued_by_first()
            brokers[0].stop()
            assert brokers[0].proc.returncode in (0, -15)
            after_stop = results["200"]
            wait_until(lambda: results["200"] >= after_stop + 20, 20, what="the others serving on after the stop")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    assert set(results) == {"200"}, results
    assert results["200"] > 50
    assert served_before > 0  # the stopped replica was taking traffic


def test_rate_limit_behind_haproxy_keys_on_the_callers_address(real_redis: RedisServer, spawn_broker: Any,
                                                               tmp_path: Path) -> None:
    """HAProxy replaces the caller's X-Forwarded-For with the peer it saw; the broker, told to trust
    HAProxy's address (as compose.yaml does), limits each caller on its own, not all callers as one.

    Callers bind distinct loopback addresses (127.0.0.2, 127.0.0.3); one broker, so the 4th failure
    is the first 429 (each replica lets one more through before it learns of a block).
    """
    broker = spawn_broker(redis_url=real_redis.url,
                          env={"BROKER_RATELIMIT_FAILURES": "3", "BROKER_TRUSTED_PROXIES": "127.0.0.1"})
    with haproxy_in_front(tmp_path, [broker.port]) as url:
        def post(n: int, caller: str) -> int:
            transport = httpx.HTTPTransport(local_address=caller)
            with httpx.Client(transport=transport, timeout=10) as http:
                ghost = TestClient(f"ghost-{n}")  # unknown client ids: only the address count grows
                return http.post(url + "/token", data=form(ghost.assertion(time.time())),
                                 headers={"X-Forwarded-For": f"198.51.100.{n}"}).status_code  # dropped by HAProxy

        assert [post(n, "127.0.0.2") for n in range(4)] == [401, 401, 401, 429]
        assert post(4, "127.0.0.3") == 401
    exceeded = [e for e in broker.logs() if e.get("event") == "ratelimit.exceeded"]
    assert [(e["kind"], e["source"]) for e in exceeded] == [("addr", "127.0.0.2")]
