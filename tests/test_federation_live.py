"""Workload identity federation against a real broker process on a real Redis: a trusted issuer
written to the registry from outside the process is in force after the epoch poll, a Kubernetes
projected service-account token gets an access token, and an issuer key rotation is picked up
without a restart."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from app.oauth.access_token import verification_keys_from_jwks, verify_access_token
from app.oauth.trust import trusted_issuer
from app.store.redis import RedisClientRegistry, connect
from app.store.trust import RedisTrustStore
from tests.conftest import wait_until
from tests.federation_issuer import FederationIssuer
from tests.helpers import ISS, RS1, URN, TestClient
from tests.test_replay import _admin_register

pytestmark = [pytest.mark.live, pytest.mark.redis]


def _trust(redis_url: str, record: dict[str, Any]) -> None:
    """Write the record as any replica would (wif-admin's API and CLI call the same store)."""

    async def main() -> None:
        client = connect(redis_url, timeout=1.0, retries=1)
        try:
            registry = RedisClientRegistry(client, timeout=1.0, retries=1)
            registry.registry_id = (await registry.poll()).marker
            await RedisTrustStore(client, registry=registry, timeout=1.0, retries=1).put_issuer(
                trusted_issuer(record, allow_http_loopback=True))
        finally:
            await client.aclose()

    asyncio.run(main())


def _post(url: str, assertion: str) -> httpx.Response:
    return httpx.post(url + "/token", data={"grant_type": "client_credentials", "client_assertion_type": URN,
                                            "client_assertion": assertion})


def test_kubernetes_workload_against_a_live_broker(real_redis: Any, spawn_broker: Any) -> None:
    bp = spawn_broker(redis_url=real_redis.url, env={"BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK": "1"})
    _admin_register(bp.url, spawn_broker.keys_dir, TestClient("payments"))
    with FederationIssuer("RS256") as cluster:
        unknown = _post(bp.url, cluster.kubernetes_token(time.time(), audience=ISS))
        assert unknown.status_code == 401
        _trust(real_redis.url, {"issuer": cluster.url, "rules": [
            {"client_id": "payments", "sub": "system:serviceaccount:payments:api"}]})
        # Every replica follows the registry epoch (polled every 0.25 s).
        wait_until(lambda: _post(bp.url, cluster.kubernetes_token(time.time(), audience=ISS)).status_code == 200,
                   timeout=10)
        new = cluster.rotate()
        resp = _post(bp.url, cluster.kubernetes_token(time.time(), audience=ISS, key=new))
        assert resp.status_code == 200, resp.text
    jwks = httpx.get(bp.url + "/jwks.json").json()
    claims = verify_access_token(resp.json()["access_token"], verification_keys_from_jwks(jwks), issuer=ISS,
                                 audience=RS1, now=time.time())
    assert (claims["client_id"], claims["federation"]) == (
        "payments", {"iss": cluster.url, "sub": "system:serviceaccount:payments:api"})
    events = [(e.get("event"), e.get("reason")) for e in bp.logs()]
    assert ("token.rejected", "federation_issuer_unknown") in events
    assert [e["kids"] for e in bp.logs() if e.get("event") == "federation.keys_fetched"][-1] == [new.kid]
