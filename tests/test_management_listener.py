"""``/metrics``, ``/healthz`` and ``/readyz`` live on the management listener only.

The token endpoint's rejection counters by reason, readable without authentication, answered
questions an attacker may not ask: a forged assertion followed by a look at the counters told
whether a client_id exists (``signature_invalid`` vs ``client_unknown``), is disabled, whether a
kid exists, whether an assertion was already spent. The public listener now serves none of these
paths, in any spelling; the management listener (``BROKER_MANAGEMENT_HOST``/``_PORT``, loopback by
default) serves them, in every worker process.
"""

from __future__ import annotations

import os
import re
import signal
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.__main__ import main
from app.config import ConfigError, Settings
from scripts.processes import BrokerProcess, process_tree
from tests.conftest import Broker, RedisServer, free_port, wait_until
from tests.helpers import ISS
from tests.rawhttp import exchange, request_bytes

NOT_FOUND = {"error": "not_found"}
MANAGEMENT_PATHS = ("/metrics", "/healthz", "/readyz")

#: Every spelling of the management paths that a router or a proxy might read differently.
SPELLINGS = [
    pytest.param(p, id=p) for p in (
        "/metrics", "/metrics/", "//metrics", "/%6detrics", "/%6Detrics", "/metrics%2f", "/metrics%2F",
        "/./metrics", "/x/../metrics", "/metrics;x", "/METRICS",
        "/healthz", "/healthz/", "//healthz", "/%68ealthz", "/healthz%2f",
        "/readyz", "/readyz/", "//readyz", "/%72eadyz", "/readyz%2f",
    )
]


def _get_raw(client: Any, raw_path: str) -> httpx.Response:
    """GET with the path bytes exactly as written (httpx would normalise ``//metrics``)."""
    return client.get(httpx.URL(ISS).copy_with(raw_path=raw_path.encode()))


# -- in process: the public app and the management app --------------------------------------------


@pytest.mark.parametrize("path", SPELLINGS)
def test_public_app_serves_no_management_path(broker: Broker, path: str) -> None:
    resp = _get_raw(broker.http, path)
    assert (resp.status_code, resp.json()) == (404, NOT_FOUND)


def test_public_app_counts_nothing_a_prober_could_read(broker: Broker, c1: Any) -> None:
    """The oracle: a forged assertion for a real client, then the counters. The public side has
    no counters to read; the management side still counts the rejection (operators keep it)."""
    forged = c1.assertion(broker.clock.now).rsplit(".", 1)[0] + ".AAAA"
    assert broker.token({"grant_type": "client_credentials", "client_assertion": forged,
                         "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"}).status_code == 401
    assert (broker.http.get("/metrics").status_code, broker.http.get("/metrics").json()) == (404, NOT_FOUND)
    assert 'broker_token_rejections_total{error="invalid_client",reason="signature_invalid"} 1' in broker.metrics()


def test_management_app_serves_health_readiness_and_metrics(broker: Broker) -> None:
    health = broker.management.get("/healthz")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    ready = broker.management.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "redis": "ok", "registry": "ok",
                            "signing_kid": broker.app.state.signer().kid}
    metrics = broker.management.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert metrics.headers["cache-control"] == "no-store"
    assert 'broker_signing_keys{state="active"} 1' in metrics.text


def test_management_app_shares_the_public_apps_state(broker: Broker) -> None:
    """One set of collaborators per process: the counters the management app renders are the ones
    the public app increments, and the drain flag the management /readyz reads is the one SIGTERM sets."""
    assert broker.app.state.management_app.state is broker.app.state
    broker.app.state.drain.draining = True
    resp = broker.management.get("/readyz")
    assert (resp.status_code, resp.json()) == (503, {"status": "draining"})


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p) for p in ("/token", "/revoke", "/introspect", "/jwks.json", "/openapi.json",
                                    "/.well-known/oauth-authorization-server", "/.well-known/openid-configuration",
                                    "/authorize", "/admin/clients")
])
def test_management_app_serves_nothing_public(broker: Broker, path: str) -> None:
    resp = broker.management.get(path)
    assert (resp.status_code, resp.json()) == (404, NOT_FOUND)


@pytest.mark.parametrize("path", [
    pytest.param(p, id=p) for p in ("/metrics/", "//metrics", "/%6detrics", "/metrics%2f", "/healthz/", "//readyz")
])
def test_management_app_answers_canonical_paths_only(broker: Broker, path: str) -> None:
    resp = _get_raw(broker.management, path)
    assert (resp.status_code, resp.json()) == (404, NOT_FOUND)


# -- settings ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("env", "message"), [
    pytest.param({"BROKER_MANAGEMENT_HOST": "localhost"}, "BROKER_MANAGEMENT_HOST must be an IP address", id="host name"),
    pytest.param({"BROKER_MANAGEMENT_HOST": "10.0.0.1/8"}, "BROKER_MANAGEMENT_HOST must be an IP address", id="network"),
    pytest.param({"BROKER_MANAGEMENT_PORT": "0"}, "BROKER_MANAGEMENT_PORT must be between 1 and 65535", id="port 0"),
    pytest.param({"BROKER_MANAGEMENT_PORT": "65536"}, "BROKER_MANAGEMENT_PORT must be between 1 and 65535", id="port too big"),
    pytest.param({"BROKER_MANAGEMENT_PORT": "http"}, "BROKER_MANAGEMENT_PORT='http' is not a valid int", id="not a number"),
])
def test_management_settings_are_validated(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env(env)


def test_management_settings_defaults_and_values() -> None:
    assert (Settings().management_host, Settings().management_port) == ("127.0.0.1", 8002)
    settings = Settings.from_env({"BROKER_MANAGEMENT_HOST": "::1", "BROKER_MANAGEMENT_PORT": "9464"})
    assert (settings.management_host, settings.management_port) == ("::1", 9464)


def test_serve_refuses_a_management_port_it_cannot_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Before uvicorn starts: the public port again, or a port something else listens on."""
    monkeypatch.delenv("BROKER_REDIS_URL", raising=False)
    monkeypatch.setenv("BROKER_KEYS_DIR", str(tmp_path / "keys"))
    port = free_port()
    monkeypatch.setenv("BROKER_MANAGEMENT_PORT", str(port))
    assert main(["serve", "--port", str(port)]) == 2
    assert capsys.readouterr().err == (f"token-broker: BROKER_MANAGEMENT_PORT={port} is also the "
                                       "public --port: give them different ports\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        monkeypatch.setenv("BROKER_MANAGEMENT_PORT", str(busy))
        assert main(["serve", "--port", str(free_port())]) == 1  # the environment, not the settings (serve --help)
    assert capsys.readouterr().err == (f"token-broker: BROKER_MANAGEMENT_PORT: 127.0.0.1:{busy} is already in use; stop the "
                                       "process listening there or set BROKER_MANAGEMENT_PORT to a free port\n")


# -- a live broker: real sockets, raw bytes ---------------------------------------------------------


def _listening_holders(port: int) -> set[int]:
    """Process ids below the test that hold the socket listening on ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:  # 0A = LISTEN
                inodes.add(fields[9])
    holders = set()
    for pid in process_tree(os.getpid())[1:]:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"/proc/{pid}/fd/{fd}")[8:-1] in inodes:
                    holders.add(pid)
            except OSError:
                pass
    return holders


def _check_listeners(bp: BrokerProcess) -> None:
    for target in (s.values[0] for s in SPELLINGS):
        resp = exchange(bp.port, request_bytes("GET", target))
        assert (target, resp.status, resp.json()) == (target, 404, NOT_FOUND)
    health = exchange(bp.management_port, request_bytes("GET", "/healthz"))
    assert (health.status, health.json()) == (200, {"status": "ok"})
    ready = exchange(bp.management_port, request_bytes("GET", "/readyz"))
    assert ready.status == 200 and ready.json()["status"] == "ready" and ready.json()["registry"] == "ok"
    metrics = exchange(bp.management_port, request_bytes("GET", "/metrics"))
    assert metrics.status == 200 and b'broker_signing_keys{state="active"} 1' in metrics.body
    for target in ("/token", "/jwks.json", "/metrics/", "//metrics", "/%6detrics"):
        resp = exchange(bp.management_port, request_bytes("GET", target))
        assert (target, resp.status, resp.json()) == (target, 404, NOT_FOUND)
    assert exchange(bp.port, request_bytes("GET", "/jwks.json")).status == 200  # the public listener serves


@pytest.mark.live
def test_live_broker_public_port_refuses_management_paths(spawn_broker: Any) -> None:
    bp = spawn_broker()
    _check_listeners(bp)


@pytest.mark.live
@pytest.mark.redis
def test_live_broker_with_two_workers_serves_both_listeners_in_each(real_redis: RedisServer, spawn_broker: Any) -> None:
    bp = spawn_broker(redis_url=real_redis.url, workers=2)
    _check_listeners(bp)
    workers = _listening_holders(bp.management_port) - {bp.proc.pid}
    assert len(workers) == 2, workers
    assert _listening_holders(bp.port) - {bp.proc.pid} == workers  # each worker serves both listeners


@pytest.mark.live
def test_live_management_listener_has_the_same_http_bounds(spawn_broker: Any) -> None:
    """app/web/server.py's options apply to both listeners: the header cap here."""
    bp = spawn_broker(env={"BROKER_HTTP_HEADER_MAX": "4096"})
    resp = exchange(bp.management_port, request_bytes("GET", "/healthz", [("X-Big", "b" * 8000)]))
    assert (resp.status, resp.json()) == (431, {"error": "invalid_request", "error_description": "The request headers are too large."})
    assert exchange(bp.management_port, request_bytes("GET", "/healthz")).status == 200


@pytest.mark.live
@pytest.mark.redis
def test_live_drain_is_reported_on_the_management_listener(real_redis: RedisServer, spawn_broker: Any) -> None:
    """SIGTERM: every worker's management /readyz says draining while the public port still serves."""
    bp = spawn_broker(redis_url=real_redis.url, workers=2, env={"BROKER_SHUTDOWN_DRAIN": "60"})
    workers = _listening_holders(bp.management_port) - {bp.proc.pid}
    os.kill(bp.proc.pid, signal.SIGTERM)  # uvicorn's supervisor passes it on to each worker
    try:
        def draining() -> bool:
            answers = [exchange(bp.management_port, request_bytes("GET", "/readyz")) for _ in range(8)]
            return all((r.status, r.json()) == (503, {"status": "draining"}) for r in answers)

        wait_until(draining, 20, what="every worker draining")
        assert exchange(bp.port, request_bytes("GET", "/jwks.json")).status == 200
    finally:
        for pid in workers:  # a second SIGTERM ends a worker's drain at once
            os.kill(pid, signal.SIGTERM)
        bp.proc.wait(20)
