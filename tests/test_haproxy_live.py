"""deploy/haproxy.cfg in front of three real broker processes: a replica stopped under load
fails no request (it drains: /readyz 503, HAProxy's check takes it out, then it stops).

Runs the repository's HAProxy config with only the addresses changed to loopback. Needs the
``haproxy`` binary (Debian package ``haproxy``): skipped locally without it, a failure in CI.
"""

from __future__ import annotations

import os
import re
import signal
import socket
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

from tests.conftest import ROOT, BrokerProcess, RedisServer, free_port, require_binary, wait_until
from tests.helpers import TestClient, form
from tests.rawhttp import exchange, request_bytes
from tests.test_replay import _admin_register

pytestmark = [pytest.mark.redis, pytest.mark.live]


def _haproxy() -> str:
    return require_binary("haproxy", "the load-balancer tests", "apt-get install haproxy")


def loopback_config(port: int, admin_port: int, brokers: list[BrokerProcess], stats: Path) -> str:
    """deploy/haproxy.cfg with loopback addresses instead of compose service names, each server's
    health check on that broker's management port, and a stats socket to read the servers' state."""
    conf = (ROOT / "deploy/haproxy.cfg").read_text()
    conf = re.sub(r"(?ms)^resolvers docker\n.*?\n\n", "", conf)
    conf = conf.replace(" resolvers docker init-addr last,libc,none", "")
    conf = conf.replace("global\n", f"global\n    stats socket {stats} mode 600 level admin\n", 1)
    for bind, local in (("bind :8080", port), ("bind :8081", admin_port)):
        assert bind in conf
        conf = conf.replace(bind, f"bind 127.0.0.1:{local}")
    for i in (1, 2, 3):
        line = f"    server broker-{i} broker-{i}:8000\n"
        assert line in conf
        conf = conf.replace(line, f"    server broker-{i} 127.0.0.1:{brokers[i - 1].port} port {brokers[i - 1].management_port}\n"
                            if i <= len(brokers) else "")
    assert ":8000" not in conf and "resolvers" not in conf
    return conf


class Haproxy:
    def __init__(self, url: str, admin_url: str, stats_socket: Path) -> None:
        self.url = url
        self.admin_url = admin_url
        self.stats_socket = stats_socket

    def stats(self) -> dict[tuple[str, str], dict[str, str]]:
        """``show stat`` from the stats socket: (proxy, server) -> its row (CSV, named columns)."""
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(5)
            sock.connect(str(self.stats_socket))
            sock.sendall(b"show stat\n")
            data = b""
            while chunk := sock.recv(65536):
                data += chunk
        header, *rows = [line for line in data.decode().splitlines() if line]
        names = header.lstrip("# ").split(",")
        return {(row[0], row[1]): dict(zip(names, row)) for row in (r.split(",") for r in rows)}

    def server_states(self) -> dict[str, str]:
        """``{"broker-1": "UP", ...}``."""
        return {server: row["status"] for (proxy, server), row in self.stats().items()
                if proxy == "brokers" and server.startswith("broker-")}

    def forwarded(self) -> int:
        """Requests the backend has sent to a replica (health checks not included)."""
        return int(self.stats()[("brokers", "BACKEND")]["req_tot"])


@contextmanager
def haproxy_in_front(tmp_path: Path, brokers: list[BrokerProcess]) -> Iterator[Haproxy]:
    """The repository's HAProxy config running on loopback; yields it once every server is up."""
    binary = _haproxy()
    port, admin_port = free_port(), free_port()
    cfg, stats = tmp_path / "haproxy.cfg", tmp_path / "haproxy.sock"
    cfg.write_text(loopback_config(port, admin_port, brokers, stats))
    assert subprocess.run([binary, "-c", "-q", "-f", str(cfg)], timeout=30).returncode == 0
    lb = subprocess.Popen([binary, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proxy = Haproxy(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}", stats)
    try:
        # Every server up: two passed checks each (rise 2), on the management port.
        wait_until(lambda: set(proxy.server_states().values()) == {"UP"}, 20, what="HAProxy to see every broker up",
                   ignore=(OSError,))
        yield proxy
    finally:
        lb.terminate()
        lb.wait(10)


def test_stopping_a_replica_behind_haproxy_fails_no_request(real_redis: RedisServer, spawn_broker: Any, tmp_path: Path) -> None:
    brokers = [spawn_broker(redis_url=real_redis.url, env={"BROKER_SHUTDOWN_DRAIN": "2.5"}) for _ in range(3)]
    client = TestClient("c1")
    _admin_register(brokers[0].url, spawn_broker.keys_dir, client)
    with haproxy_in_front(tmp_path, brokers) as proxy:
        url = proxy.url

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
    with haproxy_in_front(tmp_path, [broker]) as proxy:
        url = proxy.url
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


# -- the public frontend: normalised, then allow-listed ---------------------------------------------

NOT_FOUND = {"error": "not_found"}


def _sample(text: str, name: str) -> float:
    """One sample of a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


#: target -> what HAProxy's public frontend answers. The management paths in every spelling a
#: router might read as them, and the admin API, are answered by HAProxy itself (404, the broker's
#: JSON body); a public path in a non-canonical spelling is normalised and served.
PUBLIC_FRONTEND = {
    **{target: (404, NOT_FOUND) for target in (
        "/metrics", "/metrics/", "//metrics", "/%6detrics", "/%6Detrics", "/metrics%2f", "/metrics%2F",
        "/./metrics", "/x/../metrics", "/metrics;x", "/metrics?x=1", "/METRICS", "/healthz", "//healthz",
        "/%68ealthz", "/readyz", "/readyz/", "/%72eadyz", "/readyz%2f", "/admin/clients", "//admin/clients",
        "/admin/clients/c1", "/token/", "/", "/jwks.json/",
    )},
    "/jwks.json": (200, None),
    "//jwks.json": (200, None),
    "/%6Awks.json": (200, None),
    "/./jwks.json": (200, None),
    "/.well-known/oauth-authorization-server": (200, None),
    "/.well-known/openid-configuration": (200, None),
    "/authorize": (400, None),
    "/openapi.json": (200, None),
}


@pytest.mark.parametrize("frontend", ["public", "admin"])
def test_haproxy_serves_only_the_allowed_paths(real_redis: RedisServer, spawn_broker: Any, tmp_path: Path,
                                                frontend: str) -> None:
    broker = spawn_broker(redis_url=real_redis.url)
    with haproxy_in_front(tmp_path, [broker]) as proxy:
        port = int((proxy.url if frontend == "public" else proxy.admin_url).rsplit(":", 1)[1])
        expected = dict(PUBLIC_FRONTEND)
        if frontend == "admin":  # the admin frontend: the admin API and what its client needs, nothing else
            expected.update({"/admin/clients": (401, None), "/admin/clients/c1": (401, None), "//admin/clients": (401, None),
                             "/jwks.json": (404, NOT_FOUND), "//jwks.json": (404, NOT_FOUND),
                             "/%6Awks.json": (404, NOT_FOUND), "/./jwks.json": (404, NOT_FOUND),
                             "/openapi.json": (404, NOT_FOUND), "/.well-known/openid-configuration": (404, NOT_FOUND),
                             "/authorize": (404, NOT_FOUND)})
        seen, sent = {}, proxy.forwarded()
        for target, (status, body) in sorted(expected.items(), key=lambda item: item[1][0] != 404):
            resp = exchange(port, request_bytes("GET", target))
            seen[target] = (resp.status, resp.json() if body is not None else None)
            if status == 404:  # answered by HAProxy itself: no replica saw it
                assert (target, proxy.forwarded()) == (target, sent)
        assert seen == expected
        malformed = exchange(port, request_bytes("GET", "/%zzmetrics"))
        assert malformed.status == 400  # invalid percent-encoding: refused by the strict normalisers
        token = exchange(port, request_bytes("POST", "/token", [("Content-Type", "application/x-www-form-urlencoded")],
                                             b"grant_type=client_credentials"))
        assert token.status == 401  # reached the broker (no client assertion)
        for target in ("/revoke", "/introspect"):
            resp = exchange(port, request_bytes("POST", target, [("Content-Type", "application/x-www-form-urlencoded")], b"token=x"))
            assert (target, resp.status) == (target, 401 if frontend == "public" else 404)
        assert proxy.forwarded() == sent + sum(1 for status, _ in expected.values() if status != 404) + (
            3 if frontend == "public" else 1)


def test_admin_client_works_through_the_admin_frontend_only(real_redis: RedisServer, spawn_broker: Any,
                                                            tmp_path: Path) -> None:
    from app.client.admin import AdminError, BrokerAdmin

    broker = spawn_broker(redis_url=real_redis.url)
    admin_key = spawn_broker.keys_dir / "admin.jwk"
    with haproxy_in_front(tmp_path, [broker]) as proxy:
        with BrokerAdmin(proxy.admin_url, admin_key) as admin:
            assert [c["client_id"] for c in admin.call("GET", "/admin/clients")["clients"]] == ["broker-admin"]
        with BrokerAdmin(proxy.url, admin_key) as admin:
            with pytest.raises(AdminError):
                admin.call("GET", "/admin/clients")
            assert admin.request("GET", "/admin/clients").status_code == 404


def test_a_replica_failing_its_management_readyz_is_taken_out(real_redis: RedisServer, spawn_broker: Any,
                                                              tmp_path: Path) -> None:
    """HAProxy checks /readyz on the management port: a replica that answers 503 there (here:
    draining after SIGTERM, its public port still serving) is taken out; requests go to the other."""
    brokers = [spawn_broker(redis_url=real_redis.url),
               spawn_broker(redis_url=real_redis.url, env={"BROKER_SHUTDOWN_DRAIN": "60"})]
    with haproxy_in_front(tmp_path, brokers) as proxy:
        os.kill(brokers[1].proc.pid, signal.SIGTERM)
        try:
            wait_until(lambda: proxy.server_states() == {"broker-1": "UP", "broker-2": "DOWN"}, 20,
                       what="HAProxy to take broker-2 out")
            assert httpx.get(brokers[1].management_url + "/readyz", timeout=5).json() == {"status": "draining"}
            assert httpx.get(brokers[1].url + "/jwks.json", timeout=5).status_code == 200  # public port still up
            name = 'broker_http_requests_total{endpoint="/jwks.json",status="200"}'
            before = [_sample(httpx.get(b.management_url + "/metrics", timeout=5).text, name) for b in brokers]
            with httpx.Client(timeout=5) as http:
                statuses = Counter(http.get(proxy.url + "/jwks.json").status_code for _ in range(20))
            after = [_sample(httpx.get(b.management_url + "/metrics", timeout=5).text, name) for b in brokers]
            assert statuses == Counter({200: 20})
            assert (after[0] - before[0], after[1] - before[1]) == (20, 0)
        finally:
            os.kill(brokers[1].proc.pid, signal.SIGTERM)  # a second SIGTERM ends the drain at once
            brokers[1].proc.wait(20)
