"""asyncio path against a real broker process on loopback (registered through the admin API)."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.client.conftest import LiveBroker, ResourceServer
from tests.helpers import RS1, new_key
from token_broker_client import BrokerClient, InvalidClientError

pytestmark = pytest.mark.live


def test_100_concurrent_async_calls_on_a_cold_client_make_one_token_request(live_broker: LiveBroker) -> None:
    key = live_broker.register("async-cold")
    client = BrokerClient(live_broker.issuer, "async-cold", key, alg="ES256", kid="async-cold-1")

    async def run() -> list[str]:
        return await asyncio.gather(*(client.aget_token() for _ in range(100)))

    tokens = asyncio.run(run())
    assert len(set(tokens)) == 1
    assert live_broker.issued("async-cold") == 1


def test_async_auth_401_causes_one_reauth_and_one_retry(live_broker: LiveBroker) -> None:
    key = live_broker.register("async-retry")
    client = BrokerClient(live_broker.issuer, "async-retry", key, alg="ES256", kid="async-retry-1")
    rs = ResourceServer(reject=1)

    async def run() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(rs.handler), auth=client.auth()) as http:
            return await http.post(RS1 + "/data", content=b"body")

    response = asyncio.run(run())
    assert response.status_code == 200
    assert len(rs.seen) == 2 and rs.seen[1][1] == b"body"
    assert live_broker.issued("async-retry") == 2


def test_async_wrong_key_is_invalid_client(live_broker: LiveBroker) -> None:
    live_broker.register("async-wrong")
    client = BrokerClient(live_broker.issuer, "async-wrong", new_key("ES256"), alg="ES256", kid="async-wrong-1")
    with pytest.raises(InvalidClientError) as err:
        asyncio.run(client.aget_token())
    assert (err.value.error, err.value.status_code) == ("invalid_client", 401)


def test_key_file_and_default_scope_from_the_admin_bootstrap(live_broker: LiveBroker) -> None:
    """The admin client loads its key from the JWK file the broker generated."""
    token = live_broker.admin.get_token()
    assert token.count(".") == 2
