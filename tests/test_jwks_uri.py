"""jwks_uri clients (RFC 7591 §2; attack matrix: `client-key-rotation-and-jwks-uri`) with a key
server on loopback that counts requests."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from pathlib import Path
from typing import Any

import pytest
from fakeredis import FakeServer
from fakeredis.aioredis import FakeRedis

from app.config import Settings
from app.oauth.clients import ClientRecord, InvalidClientMetadata
from app.service.jwks_fetch import JwksFetchError, address_allowed, fetch_jwks, resolve_checked
from tests.conftest import Broker, FrozenClock
from tests.expect import assert_invalid_client, assert_token
from tests.helpers import ISS, RS1, TestClient, form
from tests.keyserver import KeyServer

COOLDOWN = 0.2
TTL = 60


def jwks_settings(tmp_path: Path, **extra: Any) -> Settings:
    return Settings(issuer=ISS, keys_dir=tmp_path / "keys", jwks_uri_allow_http_loopback=True,
                    jwks_uri_refetch_cooldown=COOLDOWN, jwks_uri_cache_ttl=TTL, jwks_uri_timeout=1.0,
                    ratelimit_failures=10_000, **extra)  # the flood test is about fetches, not rate limits


@pytest.fixture
def server():
    with KeyServer() as s:
        yield s


@pytest.fixture
def jb(tmp_path, clock):
    with Broker(jwks_settings(tmp_path), clock) as b:
        yield b


def register_uri_client(broker: Broker, client: TestClient, uri: str, **extra: Any) -> None:
    metadata = client.metadata()
    metadata.pop("jwks")
    broker.call(broker.app.state.admin_service.register, "tests", {**metadata, "jwks_uri": uri, **extra})
    broker.app.state.directory.invalidate()


def rotate(client: TestClient, kid: str) -> TestClient:
    return TestClient(client.client_id, kid=kid)


def cooldown_passes(broker: Broker) -> None:
    broker.clock.advance(COOLDOWN)
    time.sleep(COOLDOWN + 0.05)  # the cross-replica marker in Redis runs on real time


def test_token_with_fetched_key_and_one_fetch_for_many_requests(jb, server):
    c = TestClient("remote")
    server.keys = [c.public_jwk()]
    register_uri_client(jb, c, server.url)
    for _ in range(5):
        assert_token(jb.get_token(c))
    assert server.count == 1
    assert [e["kids"] for e in jb.logs() if e["event"] == "jwks_uri.fetched"] == [["remote-1"]]


def test_rotation_on_the_key_server(jb, server):
    old = TestClient("remote", kid="k1")
    server.keys = [old.public_jwk()]
    register_uri_client(jb, old, server.url)
    assert_token(jb.get_token(old))
    # The client publishes k2 and starts signing with it: one refetch, no failed request.
    new = rotate(old, "k2")
    server.keys = [old.public_jwk(), new.public_jwk()]
    assert_token(jb.get_token(new))
    assert server.count == 2
    assert_token(jb.get_token(old))
    # k1 removed at the source: dropped when the cached set expires.
    server.keys = [new.public_jwk()]
    jb.clock.advance(TTL)
    assert_token(jb.get_token(new))
    assert_invalid_client(jb.get_token(old))
    assert server.count == 3


def test_an_empty_key_set_withdraws_the_keys(jb, server):
    """The client's key server answers with no signing key: its keys are withdrawn (a compromised
    key removed), not unreachable; the old key is refused from the next fetch on (before: kept)."""
    c = TestClient("remote")
    server.keys = [c.public_jwk()]
    register_uri_client(jb, c, server.url)
    assert_token(jb.get_token(c))
    server.keys = []
    jb.clock.advance(TTL)
    assert_invalid_client(jb.get_token(c))
    assert [e["kids"] for e in jb.logs() if e["event"] == "jwks_uri.keys_withdrawn"] == [["remote-1"]]


def test_kept_keys_expire_after_max_stale(jb, server):
    """While fetches fail, the keys held are used up to BROKER_JWKS_URI_MAX_STALE (1 h) after they
    were fetched, then refused until a fetch succeeds: whoever can block the broker's fetches
    cannot keep a withdrawn key working for ever."""
    c = TestClient("remote")
    server.keys = [c.public_jwk()]
    register_uri_client(jb, c, server.url)
    assert_token(jb.get_token(c))
    server.mode = "status500"
    jb.clock.advance(TTL)
    assert_token(jb.get_token(c))  # kept: the key server is only failing
    jb.clock.advance(3600 - TTL)
    assert_invalid_client(jb.get_token(c))
    assert [e["kids"] for e in jb.logs() if e["event"] == "jwks_uri.keys_expired"] == [["remote-1"]]
    server.mode = "ok"
    cooldown_passes(jb)
    assert_token(jb.get_token(c))  # a successful fetch brings the keys back


def test_flood_of_unknown_kids_costs_one_refetch_per_cooldown(jb, server):
    c = TestClient("remote")
    server.keys = [c.public_jwk()]
    register_uri_client(jb, c, server.url)
    assert_token(jb.get_token(c))
    for i in range(20):
        assert_invalid_client(jb.token(_form(c, f"nope-{i}", jb)))
    assert server.count == 2  # first fetch + one refetch
    cooldown_passes(jb)
    assert_invalid_client(jb.token(_form(c, "again", jb)))
    assert server.count == 3


def _form(c: TestClient, kid: str, broker: Broker) -> dict[str, str]:
    return form(c.assertion(broker.clock.now, header={"alg": c.alg, "kid": kid, "typ": "client-authentication+jwt"}))


def test_concurrent_misses_share_one_fetch(jb, server):
    c = TestClient("remote")
    server.keys = [c.public_jwk()]
    server.delay = 0.2
    register_uri_client(jb, c, server.url)
    directory = jb.app.state.directory

    async def many() -> list[Any]:
        return await asyncio.gather(*(directory.get("remote", "remote-1") for _ in range(20)))

    clients = jb.call(many)
    assert all("remote-1" in cl.keys for cl in clients)
    assert server.count == 1


def test_fetched_set_is_shared_through_redis(tmp_path, server):
    """Two brokers on one store: the second uses the set the first fetched."""
    shared = FakeServer()
    c = TestClient("remote")
    server.keys = [c.public_jwk()]
    clock = FrozenClock()
    with Broker(jwks_settings(tmp_path), clock, redis=FakeRedis(server=shared)) as a, \
         Broker(jwks_settings(tmp_path), clock, redis=FakeRedis(server=shared)) as b:
        register_uri_client(a, c, server.url)
        assert_token(a.get_token(c))
        b.app.state.directory.invalidate()
        assert_token(b.get_token(c))
    assert server.count == 1


def test_fetched_keys_need_an_alg_from_the_key_or_the_registration(jb, server):
    c = TestClient("remote")
    bare = {k: v for k, v in c.public_jwk().items() if k != "alg"}
    server.keys = [bare, {"kty": "EC", "use": "enc", "crv": "P-256", "x": "ignored", "y": "ignored"}]
    register_uri_client(jb, c, server.url)
    assert_invalid_client(jb.get_token(c))
    assert [e["reason"] for e in jb.logs() if e["event"] == "jwks_uri.fetch_failed"] == ["key_invalid:jwk_alg"]

    d = TestClient("remote2")
    server.keys = [{k: v for k, v in d.public_jwk().items() if k != "alg"}]
    register_uri_client(jb, d, server.url + "?c=2", token_endpoint_auth_signing_alg="ES256")
    assert_token(jb.get_token(d))


def test_private_key_in_the_fetched_set_is_refused(jb, server):
    c = TestClient("remote")
    server.keys = [{**c.key.as_dict(private=True), "alg": "ES256", "kid": c.kid}]
    register_uri_client(jb, c, server.url)
    assert_invalid_client(jb.get_token(c))
    assert [e["reason"] for e in jb.logs() if e["event"] == "jwks_uri.fetch_failed"] == ["key_invalid:jwk_private"]


BAD_SOURCES = [
    ("redirect", {"mode": "redirect"}, "http_302"),
    ("over-64k", {"mode": "big"}, "too_large"),
    ("slow", {"delay": 1.5}, "timeout"),
    ("server-error", {"mode": "status500"}, "http_500"),
    ("not-json", {"mode": "raw", "raw": b"<html>"}, "not_json"),
    ("not-a-jwks", {"mode": "raw", "raw": b'{"kty":"EC"}'}, "not_jwks"),
]


@pytest.mark.parametrize(("setup", "reason"), [c[1:] for c in BAD_SOURCES], ids=[c[0] for c in BAD_SOURCES])
def test_bad_key_sources_fail_closed(jb, server, setup, reason):
    c = TestClient("remote")
    server.keys = [c.public_jwk()]
    for k, v in setup.items():
        setattr(server, k, v)
    register_uri_client(jb, c, server.url)
    started = time.monotonic()
    assert_invalid_client(jb.get_token(c))
    assert time.monotonic() - started < 1.4
    assert [e["reason"] for e in jb.logs() if e["event"] == "jwks_uri.fetch_failed"] == [reason]
    assert "/target" not in server.hits  # a redirect is never followed
    # A failed fetch is not retried on every request.
    before = server.count
    assert_invalid_client(jb.get_token(c))
    assert server.count == before


def test_loopback_needs_the_flag_and_no_request_is_sent(tmp_path, clock, server):
    """Without BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK: refused at registration, and a stored client
    (registered while the flag was on) gets no fetch at all."""
    with Broker(Settings(issuer=ISS, keys_dir=tmp_path / "keys"), clock) as b:
        c = TestClient("remote")
        server.keys = [c.public_jwk()]
        uri = f"https://localhost:{server.port}/jwks.json"
        with pytest.raises(InvalidClientMetadata, match="jwks_uri_private"):
            register_uri_client(b, c, uri)
        record = ClientRecord(client_id="remote", jwks_uri=uri, token_endpoint_auth_signing_alg="ES256",
                              scopes=("read",), default_scopes=("read",), audiences=(RS1,), default_audience=RS1)
        b.call(b.app.state.registry.put, record)
        b.app.state.directory.invalidate()
        assert_invalid_client(b.get_token(c))
        assert [e["reason"] for e in b.logs() if e["event"] == "jwks_uri.fetch_failed"] == ["jwks_uri_private"]
    assert server.count == 0


ADDRESSES = [
    ("10.0.0.1", False), ("172.16.5.4", False), ("192.168.1.1", False), ("169.254.169.254", False),
    ("100.64.0.1", False), ("0.0.0.0", False), ("224.0.0.1", False), ("127.0.0.1", False), ("::1", False),
    ("fe80::1", False), ("fc00::1", False), ("::ffff:10.0.0.1", False), ("::ffff:127.0.0.1", False),
    ("8.8.8.8", True), ("2606:4700:4700::1111", True),
]


@pytest.mark.parametrize(("ip", "allowed"), ADDRESSES, ids=[a[0] for a in ADDRESSES])
def test_address_guard(ip, allowed):
    assert address_allowed(ipaddress.ip_address(ip), allow_loopback=False) is allowed


def test_loopback_flag_allows_loopback_only():
    assert address_allowed(ipaddress.ip_address("127.0.0.1"), allow_loopback=True)
    assert not address_allowed(ipaddress.ip_address("10.0.0.1"), allow_loopback=True)


@pytest.mark.parametrize("url", ["http://localhost:1/x", "https://127.0.0.1:1/x", "http://10.0.0.1/x"],
                         ids=["http-no-flag", "loopback-literal", "private-literal"])
def test_fetch_refuses_before_connecting(url):
    with pytest.raises(JwksFetchError, match="jwks_uri_not_https|jwks_uri_private"):
        asyncio.run(fetch_jwks(url, allow_http_loopback=False, timeout=0.5))


def test_resolved_addresses_are_checked():
    """DNS answers are checked too (a public-looking name may resolve to loopback or a private range)."""
    with pytest.raises(JwksFetchError, match="address_forbidden"):
        asyncio.run(resolve_checked("localhost", 443, allow_loopback=False))
    assert asyncio.run(resolve_checked("localhost", 443, allow_loopback=True)) in ("127.0.0.1", "::1")


def test_static_clients_cost_no_redis_call(broker, c1):
    """The static-jwks path stays one dict lookup: no jwks_uri cache access."""
    assert_token(broker.get_token(c1))
    calls: list[str] = []
    cache = broker.app.state.directory._jwks_cache
    original = cache._run

    async def counting(coro: Any) -> Any:
        calls.append("redis")
        return await original(coro)

    cache._run = counting
    for _ in range(3):
        assert_token(broker.get_token(c1))
    assert calls == []

