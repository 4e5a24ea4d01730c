"""Client-library fixtures: the in-process broker behind a counting transport, a tiny resource
server on httpx's in-memory transport, and (module scope) a live broker process on loopback."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from app.keystore import public_jwk
from scripts.processes import register_clients, start_broker
from tests.conftest import Broker
from tests.helpers import ISS, RS1, TestClient, new_key
from token_broker_client import BrokerClient, HttpSettings


class CountingTransport(httpx.BaseTransport):
    """Passes requests to the in-process broker; counts token requests and can fail on demand."""

    def __init__(self, inner: httpx.BaseTransport) -> None:
        self.inner = inner
        self.token_forms: list[dict[str, str]] = []
        self.mode = "up"  # "up", "down" (connection refused) or "503"
        self.delay = 0.0

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.mode == "down":
            raise httpx.ConnectError("refused", request=request)
        if request.url.path == "/token":
            request.read()
            self.token_forms.append({k: v[0] for k, v in parse_qs(request.content.decode()).items()})
            if self.mode == "503":
                return httpx.Response(503, headers={"Retry-After": "2"}, json={
                    "error": "temporarily_unavailable", "error_description": "The service is temporarily unavailable."})
            if self.delay:
                time.sleep(self.delay)
        return self.inner.handle_request(request)

    @property
    def token_requests(self) -> int:
        return len(self.token_forms)


@pytest.fixture
def transport(broker: Broker) -> CountingTransport:
    return CountingTransport(broker.http._transport)


@pytest.fixture
def make_client(broker: Broker, transport: CountingTransport, c1: TestClient) -> Callable[..., BrokerClient]:
    def make(key: Any = None, **kw: Any) -> BrokerClient:
        http = HttpSettings(client=httpx.Client(transport=transport, base_url=ISS))
        options: dict[str, Any] = {"alg": c1.alg, "kid": c1.kid, "http": http, "clock": broker.clock, **kw}
        return BrokerClient(ISS, c1.client_id, key or c1.key, **options)

    return make


class ResourceServer:
    """An RS on httpx's in-memory transport: answers 401 to the first ``reject`` requests."""

    def __init__(self, reject: int = 0) -> None:
        self.reject = reject
        self.seen: list[tuple[str, bytes]] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.seen.append((request.headers.get("authorization", ""), request.read()))
        if len(self.seen) <= self.reject:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer realm="api", error="invalid_token"'})
        return httpx.Response(200, json={"data": "ok"})


# -- a live broker process for the asyncio tests -----------------------------------------------


class LiveBroker:
    def __init__(self, tmp: Path) -> None:
        self.keys_dir = tmp / "keys"
        self.log_path = tmp / "broker.log"
        self.process = start_broker(self.keys_dir, self.log_path)
        self.proc = self.process.proc
        self.port = self.process.port
        self.issuer = self.process.url
        self.admin = BrokerClient(self.issuer, "broker-admin", self.keys_dir / "admin.jwk",
                                  scope="broker:admin", resource=self.issuer + "/admin")

    def register(self, client_id: str, alg: str = "ES256", **metadata: Any) -> Any:
        key = new_key(alg)
        body = {"client_id": client_id, "jwks": {"keys": [public_jwk(key, alg=alg, kid=client_id + "-1")]},
                "scopes": ["read", "write"], "default_scopes": ["read"], "audiences": [RS1], "default_audience": RS1,
                **metadata}
        register_clients(self.issuer, self.keys_dir / "admin.jwk", [body])
        return key

    def issued(self, client_id: str) -> int:
        return sum(1 for line in self.log_path.read_text().splitlines()
                   if '"token.issued"' in line and f'"client_id":"{client_id}"' in line.replace(" ", ""))

    def stop(self) -> None:
        self.process.stop()


@pytest.fixture(scope="module")
def live_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    live = LiveBroker(tmp_path_factory.mktemp("live-broker"))
    try:
        yield live
    finally:
        live.stop()
