"""The registry shared by replicas (docs/onboarding.md, "How replicas stay in step"): two real
broker processes on one real Redis. Onboarded through one → token from the other at once; disabled /
key removed through one → refused by the other within 1 s; a key rotation loses no request; a
jwks_uri client works, including a rotation on the key server (attack matrix:
`client-key-rotation-and-jwks-uri`)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.client.admin import BrokerAdmin, add_generated_key, load_private_jwk, onboard
from tests.conftest import wait_until
from tests.helpers import ISS, RS1, URN, TestClient
from tests.keyserver import KeyServer
from token_broker_jose.assertion import make_client_assertion

pytestmark = [pytest.mark.redis, pytest.mark.live]
ENV = {"BROKER_JWKS_URI_ALLOW_HTTP_LOOPBACK": "true", "BROKER_JWKS_URI_REFETCH_COOLDOWN": "0.5",
       "BROKER_RATELIMIT_FAILURES": "10000"}


def token(url: str, key: Any, client_id: str, alg: str, kid: str | None) -> httpx.Response:
    assertion = make_client_assertion(key, client_id=client_id, issuer=ISS, alg=alg, kid=kid)
    return httpx.post(url + "/token", data={"grant_type": "client_credentials", "client_assertion_type": URN,
                                            "client_assertion": assertion}, timeout=5)


def key_file_token(url: str, path: str, client_id: str) -> httpx.Response:
    key, alg, kid = load_private_jwk(Path(path))
    return token(url, key, client_id, alg, kid)


def until_refused(url: str, attempt: Any, limit: float = 1.0) -> float:
    """Seconds until ``attempt(url)`` is refused with 401; fails past ``limit``."""
    started = time.monotonic()
    while True:
        r = attempt(url)
        if r.status_code == 401:
            return time.monotonic() - started
        assert r.status_code == 200, r.text
        assert time.monotonic() - started < limit, "still accepted after the 1 s bound"
        time.sleep(0.02)


@pytest.fixture
def pair(real_redis, spawn_broker):
    a = spawn_broker(redis_url=real_redis.url, env=ENV)
    b = spawn_broker(redis_url=real_redis.url, env=ENV)
    admin = BrokerAdmin(a.url, spawn_broker.keys_dir / "admin.jwk")
    yield a, b, admin
    admin.close()


def test_onboarded_through_one_replica_token_from_the_other_at_once(pair, tmp_path):
    a, b, admin = pair
    # b has already been asked about this client (and cached "unknown") before it exists.
    assert token(b.url, TestClient("svc").key, "svc", "ES256", None).status_code == 401
    out = onboard(admin, {"client_id": "svc", "scopes": ["read"], "default_scopes": ["read"], "audiences": [RS1]}, keys_dir=tmp_path / "ck")
    # b cached "unknown": it sees the client by its registry poll (every 0.25 s), within the 1 s bound.
    def issued() -> httpx.Response | None:
        r = key_file_token(b.url, out["private_key_path"], "svc")
        return r if r.status_code == 200 else None

    r = wait_until(issued, 1.0, what="replica b to issue a token for the new client", interval=0.02)
    assert r.json()["scope"] == "read"


def test_disable_and_key_removal_through_one_are_refused_by_the_other_within_1s(pair, tmp_path):
    a, b, admin = pair
    out = onboard(admin, {"client_id": "svc", "scopes": ["read"], "default_scopes": ["read"], "audiences": [RS1]}, keys_dir=tmp_path / "ck")
    path = out["private_key_path"]
    assert key_file_token(b.url, path, "svc").status_code == 200

    admin.update("svc", {"enabled": False})
    assert until_refused(b.url, lambda u: key_file_token(u, path, "svc")) < 1.0
    admin.update("svc", {"enabled": True})

    second = add_generated_key(admin, "svc", keys_dir=tmp_path / "ck")
    assert key_file_token(b.url, second["private_key_path"], "svc").status_code == 200
    assert key_file_token(b.url, path, "svc").status_code == 200
    admin.remove_key("svc", out["kid"])
    assert until_refused(b.url, lambda u: key_file_token(u, path, "svc")) < 1.0
    assert key_file_token(b.url, second["private_key_path"], "svc").status_code == 200

    admin.delete("svc")
    assert until_refused(b.url, lambda u: key_file_token(u, second["private_key_path"], "svc")) < 1.0


def test_key_rotation_loses_no_request(pair, tmp_path):
    """add key → the client switches at once → remove the old key; requests alternate replicas.

    Driven by progress, not by time: each phase lasts until both replicas have answered requests in
    it, however slow the machine, and then every answer must have been 200.
    """
    a, b, admin = pair
    out = onboard(admin, {"client_id": "svc", "scopes": ["read"], "default_scopes": ["read"], "audiences": [RS1]}, keys_dir=tmp_path / "ck")
    current = {"phase": "old key", "path": out["private_key_path"]}
    keys: dict[str, Any] = {}
    results: list[tuple[str, str, int]] = []  # (phase, replica, status)
    stop = threading.Event()

    def hammer() -> None:
        n = 0
        while not stop.is_set() and n < 5000:  # bounded whatever happens
            phase, path = current["phase"], current["path"]
            if path not in keys:
                keys[path] = load_private_jwk(Path(path))
            key, alg, kid = keys[path]
            replica = (a, b)[n % 2]
            results.append((phase, replica.url, token(replica.url, key, "svc", alg, kid).status_code))
            n += 1

    def both_replicas_answered(phase: str) -> bool:
        assert worker.is_alive(), "the request loop ended early"
        return {url for p, url, _ in results if p == phase} == {a.url, b.url}

    worker = threading.Thread(target=hammer)
    worker.start()
    try:
        wait_until(lambda: both_replicas_answered("old key"), 30, what="requests with the old key")
        new = add_generated_key(admin, "svc", keys_dir=tmp_path / "ck")
        current.update(phase="new key", path=new["private_key_path"])  # the client switches right away
        wait_until(lambda: both_replicas_answered("new key"), 30, what="requests with the new key")
        admin.remove_key("svc", out["kid"])
        current["phase"] = "old key removed"
        wait_until(lambda: both_replicas_answered("old key removed"), 30, what="requests after the removal")
    finally:
        stop.set()
        worker.join(20)
    failed = [r for r in results if r[2] != 200]
    assert not failed, failed
    # The removed key is refused by the other replica once its registry poll has seen the change.
    wait_until(lambda: key_file_token(b.url, out["private_key_path"], "svc").status_code == 401, 5,
               what="replica b to refuse the removed key")


def test_jwks_uri_client_across_replicas_with_rotation_on_the_key_server(pair):
    a, b, admin = pair
    with KeyServer() as server:
        old = TestClient("remote", kid="k1")
        server.keys = [old.public_jwk()]
        admin.register({"client_id": "remote", "jwks_uri": server.url, "scopes": ["read"],
                        "default_scopes": ["read"], "audiences": [RS1], "token_endpoint_auth_signing_alg": "ES256"})
        assert token(b.url, old.key, "remote", "ES256", "k1").status_code == 200
        assert token(a.url, old.key, "remote", "ES256", "k1").status_code == 200
        assert server.count == 1  # a used the set b fetched (shared through Redis)

        new = TestClient("remote", kid="k2")
        server.keys = [old.public_jwk(), new.public_jwk()]
        assert token(b.url, new.key, "remote", "ES256", "k2").status_code == 200
        assert token(a.url, new.key, "remote", "ES256", "k2").status_code == 200
        assert server.count == 2  # one refetch for the new kid, shared by both replicas

        # A flood of unknown kids on both replicas: at most one refetch per cooldown (0.5 s).
        for i in range(10):
            assert token((a.url, b.url)[i % 2], new.key, "remote", "ES256", f"bogus-{i}").status_code == 401
        assert server.count <= 3
