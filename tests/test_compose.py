"""The deployment files: compose.yaml against the official Compose specification schema, plus the
rules the schema cannot express (loopback-only ports, private Redis, shared keys, health checks).

``tests/data/compose-spec.json`` is ``schema/compose-spec.json`` from the compose-spec/compose-spec
repository, as vendored by check-jsonschema 0.39.0 (PyPI; Apache-2.0, licence beside it).
There is no Docker engine here, so the files are checked statically.
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator

from app.config import Settings

ROOT = Path(__file__).resolve().parent.parent
BROKERS = ("broker-1", "broker-2", "broker-3")


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((ROOT / "compose.yaml").read_text())


def _published(port: Any) -> tuple[str | None, str]:
    """(host_ip, published) of a short or long port entry."""
    if isinstance(port, dict):
        return port.get("host_ip"), str(port.get("published", ""))
    parts = str(port).split(":")
    if len(parts) == 3:
        return parts[0], parts[1]
    if len(parts) == 2:
        return None, parts[0]
    return None, parts[0]


def test_compose_file_is_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    Draft202012Validator.check_schema(schema)
    errors = sorted(Draft202012Validator(schema).iter_errors(compose), key=lambda e: list(e.path))
    assert [f"{list(e.path)}: {e.message}" for e in errors] == []


def test_schema_rejects_a_broken_file() -> None:
    # The check above means something only if the vendored schema can fail.
    schema = json.loads((ROOT / "tests/data/compose-spec.json").read_text())
    broken = {"services": {"x": {"image": "a", "ports": [{"target": "not-a-port"}], "restart": 3}}}
    assert list(Draft202012Validator(schema).iter_errors(broken))


def test_every_published_port_binds_loopback_only(compose: dict[str, Any]) -> None:
    published = []
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            host_ip, pub = _published(port)
            published.append((name, host_ip, pub))
    # broker (public), broker admin API, demo API
    assert published == [("lb", "127.0.0.1", "8080"), ("lb", "127.0.0.1", "8081"), ("lb", "127.0.0.1", "9000")]


def test_redis_is_private_and_never_evicts(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    assert "ports" not in redis and "expose" not in redis
    cmd = redis["command"]
    assert cmd[cmd.index("--maxmemory-policy") + 1] == "noeviction"
    assert compose["networks"]["backend"]["internal"] is True
    assert redis["networks"] == ["backend"]


def test_three_replicas_share_the_signing_keys_volume(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in BROKERS:
        svc = services[name]
        assert "signing-keys:/srv/keys:ro" in svc["volumes"], name  # one shared folder, read-only
        assert svc["environment"]["BROKER_KEYS_DIR"] == "/srv/keys"
        assert svc["environment"]["BROKER_REDIS_URL"] == "redis://redis:6379/0"
        assert svc["command"][:4] == ["python", "-m", "app", "serve"]
        assert "ports" not in svc, name
        assert svc["depends_on"]["keys-init"]["condition"] == "service_completed_successfully"
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
    init = services["keys-init"]
    assert init["command"] == ["python", "-m", "app", "keys", "init"]
    assert "signing-keys:/srv/keys" in init["volumes"]
    assert "signing-keys" in compose["volumes"]


def _haproxy_lines() -> list[str]:
    return [ln.split("#")[0].strip() for ln in (ROOT / "deploy/haproxy.cfg").read_text().splitlines()]


def _frontend(name: str) -> list[str]:
    """The lines of one HAProxy frontend section."""
    lines = _haproxy_lines()
    start = lines.index(f"frontend {name}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith(("frontend ", "backend "))), len(lines))
    return [ln for ln in lines[start:end] if ln]


def _management(compose: dict[str, Any], name: str) -> Settings:
    env = compose["services"][name]["environment"]
    return Settings.from_env({k: str(v) for k, v in env.items() if k.startswith("BROKER_MANAGEMENT_")})


def test_health_checks_use_the_health_endpoints(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name in (*BROKERS, "redis", "lb"):
        assert services[name].get("healthcheck", {}).get("test"), name
    for name in BROKERS:  # the container check asks the management listener
        port = _management(compose, name).management_port
        assert f"http://127.0.0.1:{port}/readyz" in " ".join(services[name]["healthcheck"]["test"])
    for name in BROKERS:
        assert services["lb"]["depends_on"][name]["condition"] == "service_healthy"


def test_management_listener_is_reachable_on_the_backend_network_only(compose: dict[str, Any]) -> None:
    """HAProxy's checks (and a Prometheus) reach it on the internal network; nothing publishes it."""
    services = compose["services"]
    for name in BROKERS:
        settings = _management(compose, name)
        assert settings.management_host == "0.0.0.0"  # the backend network, not only the container's loopback
        assert settings.management_port != int(services[name]["command"][services[name]["command"].index("--port") + 1])
        assert services[name]["networks"] == ["backend"] and "ports" not in services[name] and "expose" not in services[name]
    assert compose["networks"]["backend"]["internal"] is True
    lines = _haproxy_lines()
    default_server = next(ln for ln in lines if ln.startswith("default-server")).split()
    assert default_server[default_server.index("port") + 1] == str(_management(compose, "broker-1").management_port)
    assert "check" in default_server


#: What the public frontend forwards: the OAuth endpoints and documents, nothing else.
PUBLIC_PATHS = {"/token", "/revoke", "/introspect", "/jwks.json", "/.well-known/oauth-authorization-server",
                "/.well-known/openid-configuration", "/authorize", "/openapi.json"}
NORMALISERS = ["path-strip-dotdot", "path-strip-dot", "path-merge-slashes", "percent-decode-unreserved strict",
               "percent-to-uppercase strict"]


@pytest.mark.parametrize("frontend", ["public", "admin"])
def test_frontends_normalise_then_allow_list(frontend: str) -> None:
    """Normalise the URI first, then forward only listed paths (a deny-list of /metrics was bypassed
    by /metrics/, //metrics, /%6detrics, /metrics%2f); everything else is answered by HAProxy."""
    lines = _frontend(frontend)
    normalise = [ln.removeprefix("http-request normalize-uri ") for ln in lines if ln.startswith("http-request normalize-uri")]
    assert normalise == NORMALISERS
    acls = [ln.split() for ln in lines if ln.startswith("acl ")]
    assert {a[1] for a in acls} == {"allowed"} and {a[2] for a in acls} <= {"path", "path_beg"}
    exact = {p for a in acls if a[2] == "path" for p in a[3:]}
    prefixes = {p for a in acls if a[2] == "path_beg" for p in a[3:]}
    refuse = next(i for i, ln in enumerate(lines) if ln.startswith("http-request return status 404"))
    assert lines[refuse].endswith("unless allowed")
    assert max(i for i, ln in enumerate(lines) if ln.startswith("http-request normalize-uri")) < refuse
    assert not any("/metrics" in ln or "healthz" in ln or "readyz" in ln for ln in lines)
    if frontend == "public":
        assert (exact, prefixes) == (PUBLIC_PATHS, set())
    else:  # the admin API and what its client needs to get a token, on a frontend of its own
        assert (exact, prefixes) == ({"/token", "/.well-known/oauth-authorization-server", "/admin/clients"},
                                     {"/admin/clients/"})
    assert "expose-experimental-directives" in _haproxy_lines()  # normalize-uri is experimental in HAProxy 2.6


def test_haproxy_balances_the_three_replicas_by_readiness(compose: dict[str, Any]) -> None:
    lines = _haproxy_lines()
    for name in BROKERS:
        assert f"server {name} {name}:8000" in lines
    assert "bind :8080" in lines and "bind :8081" in lines
    assert "option httpchk GET /readyz" in lines
    assert "retry-on conn-failure" in lines  # never re-send a POST /token a replica already received
    assert compose["services"]["lb"]["volumes"] == ["./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro"]
    # The drain outlasts one failed health check, so HAProxy stops routing before the replica stops.
    inter = float(next(ln for ln in lines if ln.startswith("default-server")).split("inter ")[1].split("s")[0])
    for name in BROKERS:
        assert float(compose["services"][name]["environment"]["BROKER_SHUTDOWN_DRAIN"]) > inter


def test_replicas_trust_only_the_load_balancer_for_the_callers_address(compose: dict[str, Any]) -> None:
    """The per-address rate limit must see callers, not HAProxy: HAProxy forwards the peer it saw
    (tests/test_haproxy_live.py runs it) and the replicas believe that header from its address alone."""
    lb_address = compose["services"]["lb"]["networks"]["backend"]["ipv4_address"]
    subnet = compose["networks"]["backend"]["ipam"]["config"][0]["subnet"]
    assert ipaddress.ip_address(lb_address) in ipaddress.ip_network(subnet)
    for name in BROKERS:
        env = compose["services"][name]["environment"]
        settings = Settings.from_env({"BROKER_TRUSTED_PROXIES": env["BROKER_TRUSTED_PROXIES"]})
        assert settings.trusted_proxies == (lb_address,)
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "deploy/haproxy.cfg").read_text().splitlines()]
    assert lines.index("http-request del-header X-Forwarded-For") < lines.index("option forwardfor")


def test_dockerfile_is_slim_non_root_and_keyless() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    lines = [ln.strip() for ln in dockerfile.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    assert lines[0] == "FROM python:3.11-slim"
    users = [ln for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] != "USER root" and not users[-1].startswith("USER 0")
    assert not any(ln.startswith(("COPY keys", "ADD keys", "COPY . ", "ADD . ")) for ln in lines)
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert "keys/" in ignored


def test_demo_resource_server_reaches_the_issuer_through_the_load_balancer(compose: dict[str, Any]) -> None:
    api = compose["services"]["demo-api"]
    assert api["network_mode"] == "service:lb"  # 127.0.0.1:8080 inside it is HAProxy: the issuer URL
    assert "ports" not in api  # published by the lb service, on loopback only
    assert "127.0.0.1:9000:9000" in compose["services"]["lb"]["ports"]
    assert api["command"][:3] == ["python", "scripts/demo.py", "resource-server"]
