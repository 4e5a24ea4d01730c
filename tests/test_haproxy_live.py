"""deploy/haproxy.cfg in front of three real broker processes: a replica stopped under load
fails no request (it drains: /readyz 503, HAProxy's check takes it out, then it stops).

Runs the repository's HAProxy config with only the addresses changed to loopback. Needs the
``haproxy`` binary (Debian package ``haproxy``): skipped locally without it, a failure in CI.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ROOT, RedisServer, free_port
from tests.helpers import TestClient, form
from tests.test_replay import _admin_register

pytestmark = [pytest.mark.redis, pytest.mark.live]


def _haproxy() -> str:
    binary = shutil.which("haproxy")
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("haproxy is not installed: CI must run the load-balancer test (apt-get install haproxy)")
        pytest.skip("haproxy is not installed (apt-get install haproxy)")
    return binary


def loopback_config(port: int, broker_ports: list[int]) -> str:
    """deploy/haproxy.cfg with loopback addresses instead of compose service names."""
    conf = (ROOT / "deploy/haproxy.cfg").read_text()
    conf = re.sub(r"(?ms)^resolvers docker\n.*?\n\n", "", conf)
    conf = conf.replace(" resolvers docker init-addr last,libc,none", "")
    conf = conf.replace("bind :8080", f"bind 127.0.0.1:{port}")
    for i, bport in enumerate(broker_ports, start=1):
        conf = conf.replace(f"server broker-{i} broker-{i}:8000", f"server broker-{i} 127.0.0.1:{bport}")
    assert "broker-1:8000" not in conf and "resolvers" not in conf
    return conf


def test_stopping_a_replica_behind_haproxy_fails_no_request(real_redis: RedisServer, spawn_broker: Any, tmp_path: Path) -> None:
    binary = _haproxy()
    brokers = [spawn_broker(redis_url=real_redis.url, env={"BROKER_SHUTDOWN_DRAIN": "2.5"}) for _ in range(3)]
    client = TestClient("c1")
    _admin_register(brokers[0].url, spawn_broker.keys_dir, client)
    port = free_port()
    cfg = tmp_path / "haproxy.cfg"
    cfg.write_text(loopback_config(port, [b.port for b in brokers]))
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
            time.sleep(1.5)
            served_before = sum(1 for e in brokers[0].logs() if e.get("event") == "token.issued")
            brokers[0].stop()
            assert brokers[0].proc.returncode in (0, -15)
            time.sleep(1.5)
        finally:
            stop.set()
            for t in threads:
                t.join(30)
    finally:
        lb.terminate()
        lb.wait(10)
    assert set(results) == {"200"}, results
    assert results["200"] > 50
    assert served_before > 0  # the stopped replica was taking traffic
