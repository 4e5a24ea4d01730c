"""Client library against the in-process broker: assertions, caching, renewal window with
jitter (injected clock), single flight, errors, and the 401 → re-auth → retry flow."""

from __future__ import annotations

import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from app.oauth.access_token import verification_keys_from_jwks, verify_access_token
from tests.client.conftest import CountingTransport, ResourceServer
from tests.helpers import ISS, RS1, RS2, decode_unverified, new_key
from token_broker_client import (
    BrokerClient,
    BrokerError,
    BrokerUnavailable,
    ClientKey,
    HttpSettings,
    InvalidClientError,
    InvalidScopeError,
    RenewalPolicy,
)
from token_broker_client.errors import InvalidTargetError

LIFETIME = 300  # the broker fixture's token_lifetime


def test_get_token_returns_a_verifiable_access_token(broker: Any, make_client: Any) -> None:
    token = make_client().get_token()
    keys = verification_keys_from_jwks(broker.http.get("/jwks.json").json())
    claims = verify_access_token(token, keys, issuer=ISS, audience=RS1, now=broker.clock.now)
    assert (claims["client_id"], claims["scope"]) == ("c1", "read")


def test_assertions_follow_rfc7523_as_updated(make_client: Any, transport: CountingTransport, broker: Any) -> None:
    client = make_client(scope="read write", resource=RS2)
    client.get_token()
    broker.clock.advance(LIFETIME)
    client.get_token()
    assert transport.token_requests == 2
    headers_claims = [decode_unverified(f["client_assertion"]) for f in transport.token_forms]
    for form, (header, claims) in zip(transport.token_forms, headers_claims):
        assert form["grant_type"] == "client_credentials"
        assert form["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        assert (form["scope"], form["resource"]) == ("read write", RS2)
        assert header == {"alg": "ES256", "kid": "c1-1", "typ": "client-authentication+jwt"}
        assert claims["aud"] == ISS and claims["iss"] == claims["sub"] == "c1"
        assert 0 < claims["exp"] - claims["iat"] <= 60
    assert headers_claims[0][1]["jti"] != headers_claims[1][1]["jti"]


def test_token_is_cached_per_scope_and_resource(make_client: Any, transport: CountingTransport) -> None:
    client = make_client()
    assert client.get_token() == client.get_token()
    assert transport.token_requests == 1
    client.get_token(scope="write")
    client.get_token(scope="write read")
    client.get_token(scope="read write")
    client.get_token(resource=RS2)
    assert transport.token_requests == 4  # read; write; "read write" in any order; read at RS2


# -- renewal window with jitter (injected clock) ----------------------------------------------------

@pytest.mark.parametrize(("renew_at", "jitter", "draw", "renew_after"), [
    (0.85, 0.05, 0.0, 240),   # lowest draw: 80%
    (0.85, 0.05, 0.5, 255),   # middle: 85%
    (0.85, 0.05, 0.999, 270),  # highest draw: 89.99%, so renewed at second 270
    (0.8, 0.0, 0.7, 240),     # no jitter: exactly the configured point
    (0.9, 0.0, 0.2, 270),
], ids=["low", "mid", "high", "fixed-80", "fixed-90"])
def test_renewal_happens_at_the_drawn_point(make_client: Any, transport: CountingTransport, broker: Any,
                                            renew_at: float, jitter: float, draw: float, renew_after: int) -> None:
    client = make_client(renewal=RenewalPolicy(renew_at, jitter, lambda: draw))
    first = client.get_token()
    broker.clock.advance(renew_after - 1)
    assert client.get_token() == first and transport.token_requests == 1
    broker.clock.advance(1)
    assert client.get_token() != first and transport.token_requests == 2


def test_renewal_points_are_spread_inside_80_to_90_percent() -> None:
    policy = RenewalPolicy(rng=random.Random(7).random)
    points = [policy.token("t", "read", 1000.0, 300).renew_at - 1000.0 for _ in range(2000)]
    assert min(points) >= 240 and max(points) < 270
    assert max(points) - min(points) > 25  # replicas do not renew in lockstep
    assert len({round(p) for p in points}) >= 25


@pytest.mark.parametrize(("renew_at", "jitter"), [(0.7, 0.0), (0.95, 0.0), (0.85, 0.1), (0.8, 0.05), (0.85, -0.01)],
                         ids=["below-80", "above-90", "jitter-too-wide", "jitter-below-80", "negative-jitter"])
def test_renewal_settings_outside_the_window_are_refused(renew_at: float, jitter: float) -> None:
    with pytest.raises(ValueError, match="between 80% and 90%"):
        RenewalPolicy(renew_at, jitter)


def test_renewal_failure_serves_the_old_token_until_it_expires(make_client: Any, transport: CountingTransport,
                                                               broker: Any) -> None:
    client = make_client(renewal=RenewalPolicy(jitter=0.0))
    first = client.get_token()
    broker.clock.advance(LIFETIME * 0.85)
    transport.mode = "down"
    assert client.get_token() == first  # renewal is early on purpose: the old token still works
    broker.clock.advance(LIFETIME * 0.15 - 1)
    with pytest.raises(BrokerUnavailable) as err:
        client.get_token()
    assert err.value.error == "unreachable"


# -- errors the caller can act on -----------------------------------------------------------------

def test_wrong_key_is_invalid_client(make_client: Any) -> None:
    with pytest.raises(InvalidClientError) as err:
        make_client(key=new_key("ES256")).get_token()
    assert (err.value.error, err.value.status_code) == ("invalid_client", 401)


def test_unknown_scope_is_invalid_scope(make_client: Any) -> None:
    with pytest.raises(InvalidScopeError) as err:
        make_client().get_token(scope="admin")
    assert (err.value.error, err.value.status_code) == ("invalid_scope", 400)


def test_unregistered_resource_is_invalid_target(make_client: Any) -> None:
    with pytest.raises(InvalidTargetError) as err:
        make_client().get_token(resource="https://elsewhere.test")
    assert (err.value.error, err.value.status_code) == ("invalid_target", 400)


def test_broker_503_is_broker_unavailable_with_retry_after(make_client: Any, transport: CountingTransport) -> None:
    client = make_client()
    client.get_token(scope="write")  # discovery done; now the token endpoint answers 503
    transport.mode = "503"
    with pytest.raises(BrokerUnavailable) as err:
        client.get_token()
    assert (err.value.error, err.value.status_code, err.value.retry_after) == ("temporarily_unavailable", 503, 2.0)


def test_broker_unreachable_is_broker_unavailable(make_client: Any, transport: CountingTransport) -> None:
    transport.mode = "down"
    with pytest.raises(BrokerUnavailable) as err:
        make_client().get_token()
    assert err.value.error == "unreachable"


def test_metadata_for_another_issuer_is_refused(c1: Any, broker: Any, transport: CountingTransport) -> None:
    client = BrokerClient("https://other.test", "c1", c1.key, alg="ES256", kid="c1-1",
                          http=HttpSettings(client=httpx.Client(transport=transport, base_url=ISS)), clock=broker.clock)
    with pytest.raises(BrokerError) as err:
        client.get_token()
    assert err.value.error == "metadata_invalid"
    assert transport.token_requests == 0


def test_key_material_is_not_in_repr(make_client: Any, c1: Any) -> None:
    client = make_client()
    text = repr(client) + repr(ClientKey(c1.key, alg="ES256"))
    assert c1.key.as_dict(private=True)["d"] not in text


# -- single flight -----------------------------------------------------------------------------------

def test_100_concurrent_calls_on_a_cold_client_make_one_token_request(make_client: Any,
                                                                      transport: CountingTransport) -> None:
    client = make_client()
    transport.delay = 0.2  # keep the first request in flight while the others arrive
    start = threading.Barrier(100)

    def call(_: int) -> str:
        start.wait(10)
        return client.get_token()

    with ThreadPoolExecutor(100) as pool:
        tokens = list(pool.map(call, range(100)))
    assert len(set(tokens)) == 1
    assert transport.token_requests == 1


# -- httpx.Auth: 401 → one re-authentication, one retry ---------------------------------------------

def test_auth_sends_the_bearer_token(make_client: Any) -> None:
    client = make_client()
    rs = ResourceServer()
    with httpx.Client(transport=httpx.MockTransport(rs.handler), auth=client.auth()) as http:
        assert http.get(RS1 + "/data").json() == {"data": "ok"}
    assert rs.seen[0][0] == "Bearer " + client.get_token()


def test_401_causes_exactly_one_reauth_and_one_retry(make_client: Any, transport: CountingTransport) -> None:
    client = make_client()
    rs = ResourceServer(reject=1)
    with httpx.Client(transport=httpx.MockTransport(rs.handler), auth=client.auth()) as http:
        response = http.post(RS1 + "/data", content=b"payload")
    assert response.status_code == 200
    assert len(rs.seen) == 2 and transport.token_requests == 2
    assert rs.seen[1][1] == b"payload"  # the body is sent again


def test_401_twice_is_returned_without_looping(make_client: Any, transport: CountingTransport) -> None:
    client = make_client()
    rs = ResourceServer(reject=10)
    with httpx.Client(transport=httpx.MockTransport(rs.handler), auth=client.auth()) as http:
        response = http.get(RS1 + "/data")
    assert response.status_code == 401
    assert len(rs.seen) == 2 and transport.token_requests == 2


def test_concurrent_401s_share_one_reauth(make_client: Any, transport: CountingTransport, broker: Any) -> None:
    client = make_client()
    first = client.get_token()
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["authorization"])
        if request.headers["authorization"] == "Bearer " + first:
            return httpx.Response(401, headers={"WWW-Authenticate": 'Bearer error="invalid_token"'})
        return httpx.Response(200)

    # Past the broker's own cache threshold, so re-authentication mints a new token.
    broker.clock.advance(LIFETIME * 0.6)
    with httpx.Client(transport=httpx.MockTransport(handler), auth=client.auth()) as http:
        with ThreadPoolExecutor(10) as pool:
            statuses = list(pool.map(lambda _: http.get(RS1 + "/x").status_code, range(10)))
    assert statuses == [200] * 10
    assert transport.token_requests == 2


def test_concurrent_callers_share_one_failure(make_client: Any, transport: CountingTransport) -> None:
    """A wrong key with 20 waiting callers is one refused request, not 20."""
    client = make_client(key=new_key("ES256"))
    transport.delay = 0.2
    start = threading.Barrier(20)

    def call(_: int) -> str:
        start.wait(10)
        try:
            client.get_token()
        except InvalidClientError as exc:
            return exc.error
        return "issued"

    with ThreadPoolExecutor(20) as pool:
        assert list(pool.map(call, range(20))) == ["invalid_client"] * 20
    assert transport.token_requests == 1
    with pytest.raises(InvalidClientError):  # a later call asks again
        client.get_token()
    assert transport.token_requests == 2
