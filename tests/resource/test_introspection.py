"""Optional revocation check through the broker's introspection endpoint (RFC 7662), live broker."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest

from tests.client.conftest import LiveBroker
from tests.helpers import RS1, URN
from token_broker_client import BrokerClient, make_client_assertion
from token_broker_resource import BearerError, Introspection, ResourceVerifier, VerifierUnavailable

pytestmark = pytest.mark.live


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveBroker]:
    broker = LiveBroker(tmp_path_factory.mktemp("introspection"))
    try:
        yield broker
    finally:
        broker.stop()


def test_revoked_token_is_refused_when_introspection_is_on(live: LiveBroker) -> None:
    client_key = live.register("intro-client")
    rs_key = live.register("intro-rs", scopes=["broker:introspect"], default_scopes=["broker:introspect"])
    caller = BrokerClient(live.issuer, "intro-client", client_key, alg="ES256", kid="intro-client-1")
    token = caller.get_token()
    verifier = ResourceVerifier(live.issuer, RS1, introspection=Introspection(
        live.issuer, "intro-rs", rs_key, alg="ES256", kid="intro-rs-1", endpoint=live.issuer + "/introspect"))
    plain = ResourceVerifier(live.issuer, RS1)

    assert asyncio.run(verifier.verify(token, ["read"])).client_id == "intro-client"

    assertion = make_client_assertion(client_key, client_id="intro-client", issuer=live.issuer, alg="ES256",
                                      kid="intro-client-1")
    revoked = httpx.post(live.issuer + "/revoke", data={"token": token, "client_assertion_type": URN,
                                                        "client_assertion": assertion})
    assert revoked.status_code == 200

    with pytest.raises(BearerError) as err:
        asyncio.run(verifier.verify(token, ["read"]))
    assert (err.value.status, err.value.error, err.value.reason) == (401, "invalid_token", "token_inactive")
    # Without introspection the signature alone still passes: revocation needs the check.
    assert asyncio.run(plain.verify(token, ["read"])).client_id == "intro-client"


def test_introspection_refused_to_the_rs_fails_closed(live: LiveBroker) -> None:
    client_key = live.register("intro-client2")
    not_allowed = live.register("intro-rs2")  # no broker:introspect scope
    token = BrokerClient(live.issuer, "intro-client2", client_key, alg="ES256", kid="intro-client2-1").get_token()
    verifier = ResourceVerifier(live.issuer, RS1, introspection=Introspection(live.issuer, "intro-rs2", not_allowed, alg="ES256",
                                                                                kid="intro-rs2-1"))
    with pytest.raises(VerifierUnavailable, match="HTTP 403"):
        asyncio.run(verifier.verify(token))
