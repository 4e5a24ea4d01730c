"""Live brokers and the npm-installed Node clients for the third-party client tests.

- ``interop_broker``: one broker process for the session, plain http on loopback, its issuer its
  own URL (``http://127.0.0.1:<port>``), so a client that puts the URL it posts to in ``aud`` puts
  exactly the broker's token endpoint there. Every test registers its own clients on it.
- ``tls_broker``: a broker behind HAProxy terminating TLS with a certificate from a test CA
  (trustme), issuer ``https://localhost:<port>/broker``: the deployment MSAL needs (https, and an
  authority URL with at least one path segment). HAProxy strips the ``/broker`` prefix and maps the
  RFC 8414 §3.1 metadata location of a path issuer (``/.well-known/<doc>/broker``) to the broker's.
- ``node_clients``: ``node tests/interop/node/client.mjs`` with openid-client and jose installed
  from npm (``npm install --no-package-lock``, once, when ``node_modules`` lacks a pinned version).

Without node, npm or haproxy these tests skip locally and fail under ``CI=true``
(``tests.conftest.require_binary``).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.oauth.access_token import verification_keys_from_jwks, verify_access_token
from scripts.processes import BrokerProcess, free_port, register_clients, start_broker, stop_process, wait_until
from tests.conftest import require_binary
from tests.helpers import RS1, RS2

NODE_DIR = Path(__file__).resolve().parent / "node"
#: The one refusal body of every failed client authentication.
INVALID_CLIENT = {"error": "invalid_client", "error_description": "Client authentication failed."}


#: Fixtures here that start a broker or HAProxy (session scope: set up before the function-scoped
#: guard in tests/conftest.py could see the process start).
_SERVER_FIXTURES = {"interop_broker", "tls_broker"}


def pytest_runtest_setup(item: pytest.Item) -> None:
    used = _SERVER_FIXTURES & set(getattr(item, "fixturenames", ()))
    if used and not item.get_closest_marker("live"):
        pytest.fail(f"{item.nodeid} uses {', '.join(sorted(used))}: mark it live", pytrace=False)


class InteropBroker:
    """A running broker: where it listens (``url``), what it calls itself (``issuer``), and the
    CA file a client must trust (``ca_file``; None for plain http)."""

    def __init__(self, process: BrokerProcess, keys_dir: Path, issuer: str, ca_file: Path | None = None) -> None:
        self.process = process
        self.keys_dir = keys_dir
        self.issuer = issuer
        self.ca_file = ca_file

    @property
    def token_endpoint(self) -> str:
        return self.issuer + "/token"

    def register(self, client_id: str, public_jwk: dict[str, Any], **metadata: Any) -> dict[str, Any]:
        """Register ``client_id`` with one public key through the admin API (on the broker's own port)."""
        body = {"client_id": client_id, "jwks": {"keys": [public_jwk]}, "scopes": ["read", "write"],
                "default_scopes": ["read"], "audiences": [RS1, RS2], "default_audience": RS1, **metadata}
        return register_clients(self.process.url, self.keys_dir / "admin.jwk", [body])[0]

    def verify(self, access_token: str, audience: str = RS1) -> dict[str, Any]:
        """The claims of an access token the broker issued, checked against its published keys."""
        jwks = httpx.get(self.process.url + "/jwks.json", timeout=10).json()
        return verify_access_token(access_token, verification_keys_from_jwks(jwks), issuer=self.issuer,
                                   audience=audience, now=time.time())

    def metric(self, sample: str) -> float:
        """One sample of the management listener's /metrics page (0 when absent)."""
        text = httpx.get(self.process.management_url + "/metrics", timeout=10).text
        for line in text.splitlines():
            if line.startswith(sample + " "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def events(self, event: str, client_id: str) -> list[dict[str, Any]]:
        return [e for e in self.process.logs() if e.get("event") == event and e.get("client_id") == client_id]


@pytest.fixture(scope="session")
def interop_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteropBroker]:
    tmp = tmp_path_factory.mktemp("interop-broker")
    process = start_broker(tmp / "keys", tmp / "broker.log", timeout=30)
    try:
        yield InteropBroker(process, tmp / "keys", process.url)
    finally:
        process.stop()


# -- TLS in front: HAProxy with a certificate from a test CA -------------------------------------

#: Path prefix of the TLS broker's issuer (MSAL refuses an authority URL without a path segment).
TLS_PREFIX = "/broker"


def tls_front_config(port: int, broker: BrokerProcess, pem: Path) -> str:
    return f"""global
    maxconn 256

defaults
    mode http
    timeout connect 2s
    timeout client 30s
    timeout server 30s

frontend tls
    bind 127.0.0.1:{port} ssl crt {pem}
    # RFC 8414 §3.1: the metadata of issuer https://host/broker is at /.well-known/<doc>/broker.
    http-request set-path /.well-known/%[path,field(3,/)] if {{ path_reg ^/[.]well-known/[^/]+{TLS_PREFIX}$ }}
    # Everything else below the issuer path: the broker serves it at the root.
    http-request set-path %[path,regsub(^{TLS_PREFIX}/,/)] if {{ path_beg {TLS_PREFIX}/ }}
    http-request del-header X-Forwarded-For
    option forwardfor
    default_backend broker

backend broker
    server broker 127.0.0.1:{broker.port}
"""


@pytest.fixture(scope="session")
def tls_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[InteropBroker]:
    import trustme

    haproxy = require_binary("haproxy", "the TLS interop tests (MSAL)", "apt-get install haproxy")
    tmp = tmp_path_factory.mktemp("tls-broker")
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost")
    pem = tmp / "server.pem"  # HAProxy reads certificate chain and key from one file
    server_cert.private_key_and_cert_chain_pem.write_to_path(str(pem))
    ca_file = tmp / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    port = free_port()
    issuer = f"https://localhost:{port}{TLS_PREFIX}"
    process = start_broker(tmp / "keys", tmp / "broker.log", issuer=issuer, timeout=30,
                           env={"BROKER_TRUSTED_PROXIES": "127.0.0.1"})
    cfg = tmp / "haproxy.cfg"
    cfg.write_text(tls_front_config(port, process, pem))
    lb: subprocess.Popen[bytes] | None = None
    try:
        check = subprocess.run([haproxy, "-c", "-q", "-f", str(cfg)], capture_output=True, timeout=30)
        assert check.returncode == 0, check.stderr.decode()
        lb = subprocess.Popen([haproxy, "-db", "-f", str(cfg)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        metadata_url = f"https://localhost:{port}/.well-known/oauth-authorization-server{TLS_PREFIX}"
        context = ssl.create_default_context(cafile=str(ca_file))

        def serves_metadata() -> bool:
            if lb.poll() is not None:
                raise RuntimeError(f"haproxy exited with code {lb.returncode}")
            return httpx.get(metadata_url, verify=context, timeout=2).status_code == 200

        wait_until(serves_metadata, 20, what="HAProxy to serve the broker over TLS", ignore=(httpx.HTTPError,))
        yield InteropBroker(process, tmp / "keys", issuer, ca_file)
    finally:
        if lb is not None:
            stop_process(lb)
        process.stop()


# -- Node: openid-client and jose from npm ---------------------------------------------------------


class NodeClients:
    def __init__(self, node: str) -> None:
        self.node = node

    def run(self, config: dict[str, Any], workdir: Path, script: str = "client.mjs") -> dict[str, Any]:
        """Run ``script`` (``client.mjs``, or ``dpop.mjs`` for the DPoP tests) with ``config``; its JSON answer."""
        path = workdir / "node-config.json"
        path.write_text(json.dumps(config))
        done = subprocess.run([self.node, str(NODE_DIR / script), str(path)], cwd=NODE_DIR,
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)


@pytest.fixture(scope="session")
def node_clients() -> NodeClients:
    node, npm = _node_tool("node"), _node_tool("npm")
    if not _installed_as_pinned():
        done = subprocess.run([npm, "install", "--no-package-lock", "--no-audit", "--no-fund", "--ignore-scripts"],
                              cwd=NODE_DIR, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, f"npm install failed in {NODE_DIR}:\n{done.stdout}\n{done.stderr}"
    assert _installed_as_pinned(), f"npm install in {NODE_DIR} did not install the pinned versions"
    return NodeClients(node)


def _node_tool(name: str) -> str:
    """``tests.conftest.require_binary``'s rule (a skip locally, a failure under ``CI=true``) with
    the right advice: scripts/test.sh installs redis-server, haproxy and wrk, not Node."""
    binary = shutil.which(name)
    if binary is None:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{name} is not installed: CI must run the Node interop tests (apt-get install nodejs npm)")
        pytest.skip(f"{name} is not installed: the Node interop tests need it (apt-get install nodejs npm)")
    return binary


def _installed_as_pinned() -> bool:
    """Every dependency in package.json is in node_modules at exactly its pinned version (a
    node_modules left by an older package.json is installed again)."""
    pinned = json.loads((NODE_DIR / "package.json").read_text())["dependencies"]
    for name, version in pinned.items():
        installed = NODE_DIR / "node_modules" / name / "package.json"
        if not installed.is_file() or json.loads(installed.read_text()).get("version") != version:
            return False
    return True
